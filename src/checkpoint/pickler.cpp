#include "checkpoint/pickler.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint::detail {
namespace {

const char* storage_name(at::ScalarType dtype) {
  for (const auto& t : kStorageTypes)
    if (t.dtype == dtype) return t.name;
  throw std::invalid_argument(fmt::format(
      "Cannot save a tensor of dtype {} in a torch.save file (supported: float, double, half, "
      "bfloat16, int64, int32, int16, int8, uint8, bool, complex64, complex128)",
      c10::toString(dtype)));
}

class Pickler {
 public:
  void dump(const Value& root) {
    out_ += "\x80\x02";
    write(root);
    out_ += '.';
  }
  std::string& bytes() { return out_; }
  // Storage records to write: key -> CPU contiguous bytes.
  std::vector<std::pair<std::string, at::Tensor>>& storages() { return storages_; }

 private:
  void op(char c) { out_ += c; }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  void str(const std::string& s) {
    op('X');
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void global(const char* module, const char* name) {
    op('c');
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      op('M');
      out_ += static_cast<char>(v & 0xff);
      out_ += static_cast<char>(v >> 8);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      // LONG1: little-endian two's complement, shortest form.
      std::string b;
      uint64_t u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) b += static_cast<char>((u >> (8 * i)) & 0xff);
      while (b.size() > 1) {
        const auto last = static_cast<unsigned char>(b.back());
        const auto prev = static_cast<unsigned char>(b[b.size() - 2]);
        if ((last == 0x00 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) {
          b.pop_back();
        } else {
          break;
        }
      }
      op('\x8a');
      out_ += static_cast<char>(b.size());
      out_ += b;
    }
  }
  void floating(double d) {
    op('G');
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    for (int i = 7; i >= 0; --i) out_ += static_cast<char>((bits >> (8 * i)) & 0xff);
  }
  void tuple_of_ints(at::IntArrayRef values) {
    op('(');
    for (auto v : values) integer(v);
    op('t');
  }

  void tensor(const at::Tensor& t) {
    if (!t.defined()) {
      op('N');
      return;
    }
    if (t.is_sparse() || t.is_quantized() || t.is_nested()) {
      throw std::invalid_argument(
          "Cannot save sparse, quantized or nested tensors in a checkpoint");
    }
    const auto& storage = t.storage();
    const void* impl = storage.unsafeGetStorageImpl();
    const char* type = storage_name(t.scalar_type());
    const int64_t itemsize = static_cast<int64_t>(t.element_size());
    std::string key;
    auto it = storage_keys_.find(impl);
    if (it != storage_keys_.end()) {
      if (it->second.second != t.scalar_type()) {
        throw std::invalid_argument(
            "Cannot save two tensors that view one storage with different dtypes (torch.save "
            "refuses this too); clone one of them first");
      }
      key = it->second.first;
    } else {
      key = std::to_string(storage_keys_.size());
      storage_keys_.emplace(impl, std::make_pair(key, t.scalar_type()));
      // The whole storage, as bytes on the CPU.
      const int64_t numel = static_cast<int64_t>(storage.nbytes()) / itemsize;
      at::Tensor whole = at::empty({0}, t.options()).set_(storage, 0, {numel}, {1});
      storages_.emplace_back(key, whole.detach().to(at::kCPU).contiguous());
    }
    const int64_t numel = static_cast<int64_t>(storage.nbytes()) / itemsize;
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    // persistent id: ('storage', storage_type, key, location, numel)
    op('(');
    str("storage");
    global("torch", type);
    str(key);
    str(t.device().str());
    integer(numel);
    op('t');
    op('Q');
    integer(t.storage_offset());
    tuple_of_ints(t.sizes());
    tuple_of_ints(t.strides());
    op('\x89');  // requires_grad = False
    global("collections", "OrderedDict");
    op(')');
    op('R');
    op('t');
    op('R');
  }

  void write(const Value& v) {
    switch (v.kind()) {
      case Value::Kind::None:
        op('N');
        break;
      case Value::Kind::Bool:
        op(v.to_bool() ? '\x88' : '\x89');
        break;
      case Value::Kind::Int:
        integer(v.to_int());
        break;
      case Value::Kind::Double:
        floating(v.to_double());
        break;
      case Value::Kind::String:
        str(v.to_string());
        break;
      case Value::Kind::Tensor:
        tensor(v.to_tensor());
        break;
      case Value::Kind::List:
        op(']');
        if (!v.elements().empty()) {
          op('(');
          for (const auto& e : v.elements()) write(e);
          op('e');
        }
        break;
      case Value::Kind::Tuple:
        op('(');
        for (const auto& e : v.elements()) write(e);
        op('t');
        break;
      case Value::Kind::Dict:
        if (v.is_ordered_dict()) {
          global("collections", "OrderedDict");
          op(')');
          op('R');
        } else {
          op('}');
        }
        if (!v.items().empty()) {
          op('(');
          for (const auto& [k, item] : v.items()) {
            write(k);
            write(item);
          }
          op('u');
        }
        break;
    }
  }

  std::string out_;
  std::unordered_map<const void*, std::pair<std::string, at::ScalarType>> storage_keys_;
  std::vector<std::pair<std::string, at::Tensor>> storages_;
};

}  // namespace

PickledValue pickle_value(const Value& value) {
  Pickler pickler;
  pickler.dump(value);
  return PickledValue{std::move(pickler.bytes()), std::move(pickler.storages())};
}

}  // namespace cppfabric::checkpoint::detail
