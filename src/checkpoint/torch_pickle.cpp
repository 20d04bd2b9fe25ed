// torch.save's format: a zip archive (stored entries) with <name>/data.pkl (pickle protocol 2),
// one <name>/data/<key> record per storage, and a few small metadata records.
// Writing goes through LibTorch's PyTorchStreamWriter (the writer Python itself uses); reading
// uses the small bounded zip and pickle readers below, which never execute anything.
#include "cppfabric/checkpoint/torch_pickle.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <unordered_map>

#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint {
namespace {

// ------------------------------------------------------------------------------ dtypes

struct StorageType {
  const char* name;
  at::ScalarType dtype;
};
constexpr std::array<StorageType, 12> kStorageTypes{{
    {"FloatStorage", at::kFloat},
    {"DoubleStorage", at::kDouble},
    {"HalfStorage", at::kHalf},
    {"BFloat16Storage", at::kBFloat16},
    {"LongStorage", at::kLong},
    {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort},
    {"CharStorage", at::kChar},
    {"ByteStorage", at::kByte},
    {"BoolStorage", at::kBool},
    {"ComplexFloatStorage", at::kComplexFloat},
    {"ComplexDoubleStorage", at::kComplexDouble},
}};

const char* storage_name(at::ScalarType dtype) {
  for (const auto& t : kStorageTypes)
    if (t.dtype == dtype) return t.name;
  throw std::invalid_argument(fmt::format(
      "Cannot save a tensor of dtype {} in a torch.save file (supported: float, double, half, "
      "bfloat16, int64, int32, int16, int8, uint8, bool, complex64, complex128)",
      c10::toString(dtype)));
}

// ------------------------------------------------------------------------------ pickler

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

void write_archive(const Value& value, const std::function<size_t(const void*, size_t)>& sink) {
  Pickler pickler;
  pickler.dump(value);
  try {
    caffe2::serialize::PyTorchStreamWriter writer(sink);
    writer.writeRecord("data.pkl", pickler.bytes().data(), pickler.bytes().size());
    writer.writeRecord(".format_version", "1", 1);
    writer.writeRecord(".storage_alignment", "64", 2);
    writer.writeRecord("byteorder", "little", 6);
    for (const auto& [key, tensor] : pickler.storages()) {
      writer.writeRecord("data/" + key, tensor.data_ptr(), tensor.nbytes());
    }
    writer.writeEndOfFile();
  } catch (const c10::Error& e) {
    throw std::runtime_error(
        fmt::format("Writing the checkpoint failed: {}", e.what_without_backtrace()));
  }
}

// ------------------------------------------------------------------------------ zip reader

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  virtual void read(uint64_t offset, void* dst, uint64_t n) const = 0;
};

class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string_view data) : data_(data) {}
  uint64_t size() const override { return data_.size(); }
  void read(uint64_t offset, void* dst, uint64_t n) const override {
    if (n > 0) std::memcpy(dst, data_.data() + offset, n);
  }

 private:
  std::string_view data_;
};

class FileSource final : public ByteSource {
 public:
  FileSource(int fd, uint64_t size, std::string what)
      : fd_(fd), size_(size), what_(std::move(what)) {}
  ~FileSource() override { ::close(fd_); }
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* dst, uint64_t n) const override {
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        throw std::runtime_error(
            fmt::format("Reading {} failed at byte {}: {}", what_, offset,
                        got < 0 ? std::strerror(errno) : "unexpected end of file"));
      }
      out += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

 private:
  int fd_;
  uint64_t size_;
  std::string what_;
};

// CRC-32 (zip's polynomial), eight bytes per step ("slicing-by-8").
uint32_t crc32_update(uint32_t crc, const unsigned char* data, std::size_t n) {
  static const auto tables = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    return t;
  }();
  crc = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, data, 4);
    std::memcpy(&hi, data + 4, 4);
    lo ^= crc;  // little-endian hosts only, as the format itself
    crc = tables[7][lo & 0xff] ^ tables[6][(lo >> 8) & 0xff] ^ tables[5][(lo >> 16) & 0xff] ^
          tables[4][lo >> 24] ^ tables[3][hi & 0xff] ^ tables[2][(hi >> 8) & 0xff] ^
          tables[1][(hi >> 16) & 0xff] ^ tables[0][hi >> 24];
    data += 8;
    n -= 8;
  }
  while (n-- > 0) crc = tables[0][(crc ^ *data++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

struct Record {
  uint64_t data_offset = 0;
  uint64_t size = 0;
  uint32_t crc = 0;
};

class ZipReader {
 public:
  ZipReader(std::unique_ptr<ByteSource> src, std::string what, const ReadLimits& limits)
      : src_(std::move(src)), what_(std::move(what)) {
    parse(limits);
  }

  const std::string& prefix() const { return prefix_; }
  const Record* find(const std::string& name) const {
    auto it = records_.find(prefix_ + name);
    return it == records_.end() ? nullptr : &it->second;
  }
  std::string read_small(const std::string& name, uint64_t max_size) const {
    const Record* r = find(name);
    if (r == nullptr) fail(fmt::format("the record '{}' is missing", name));
    if (r->size > max_size)
      fail(fmt::format("the record '{}' is too large ({} bytes)", name, r->size));
    std::string out(r->size, '\0');
    read_into(*r, out.data(), name);
    return out;
  }
  void read_into(const Record& r, void* dst, const std::string& name) const {
    if (r.size == 0) return;
    src_->read(r.data_offset, dst, r.size);
    const uint32_t crc = crc32_update(0, static_cast<const unsigned char*>(dst), r.size);
    if (crc != r.crc) fail(fmt::format("the record '{}' fails its CRC check (corrupt file)", name));
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(fmt::format(
        "Cannot read checkpoint {}: {}. It is not a valid torch.save file (truncated, corrupt, or "
        "another format).",
        what_, why));
  }

 private:
  uint64_t u16(const unsigned char* p) const { return p[0] | (uint64_t(p[1]) << 8); }
  uint64_t u32(const unsigned char* p) const { return u16(p) | (u16(p + 2) << 16); }
  uint64_t u64(const unsigned char* p) const { return u32(p) | (u32(p + 4) << 32); }

  void read_at(uint64_t offset, void* dst, uint64_t n, const char* what) const {
    if (offset > src_->size() || n > src_->size() - offset)
      fail(fmt::format("{} lies outside the file", what));
    src_->read(offset, dst, n);
  }

  void parse(const ReadLimits& limits) {
    const uint64_t size = src_->size();
    if (size < 22) fail("the file is too small to be a zip archive");
    unsigned char magic[2];
    read_at(0, magic, 2, "the file header");
    if (magic[0] == 0x80 && magic[1] <= 5) {
      fail(
          "it is a bare pickle, as torch's legacy format (torch.save with "
          "_use_new_zipfile_serialization=False) writes; re-save it with a plain torch.save");
    }
    const uint64_t tail = std::min<uint64_t>(size, 22 + 65535);
    std::string buf(tail, '\0');
    read_at(size - tail, buf.data(), tail, "the end record");
    const auto* b = reinterpret_cast<const unsigned char*>(buf.data());
    int64_t eocd = -1;
    for (int64_t i = static_cast<int64_t>(tail) - 22; i >= 0; --i) {
      if (u32(b + i) == 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) fail("no zip end-of-central-directory record");
    uint64_t entries = u16(b + eocd + 10);
    uint64_t cd_size = u32(b + eocd + 12);
    uint64_t cd_offset = u32(b + eocd + 16);
    const uint64_t eocd_abs = size - tail + static_cast<uint64_t>(eocd);
    if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
      // zip64: locator right before the end record.
      if (eocd_abs < 20) fail("zip64 locator missing");
      unsigned char loc[20];
      read_at(eocd_abs - 20, loc, 20, "the zip64 locator");
      if (u32(loc) != 0x07064b50) fail("zip64 locator missing");
      unsigned char z[56];
      read_at(u64(loc + 8), z, 56, "the zip64 end record");
      if (u32(z) != 0x06064b50) fail("bad zip64 end record");
      entries = u64(z + 32);
      cd_size = u64(z + 40);
      cd_offset = u64(z + 48);
    }
    if (entries > static_cast<uint64_t>(limits.max_records)) fail("too many zip entries");
    if (cd_offset > size || cd_size > size - cd_offset)
      fail("the central directory lies outside the file");
    std::string cd(cd_size, '\0');
    read_at(cd_offset, cd.data(), cd_size, "the central directory");
    const auto* c = reinterpret_cast<const unsigned char*>(cd.data());
    uint64_t pos = 0;
    for (uint64_t n = 0; n < entries; ++n) {
      if (cd_size - pos < 46 || u32(c + pos) != 0x02014b50)
        fail("a broken central directory entry");
      const uint64_t method = u16(c + pos + 10);
      const uint32_t crc = static_cast<uint32_t>(u32(c + pos + 16));
      uint64_t csize = u32(c + pos + 20);
      uint64_t usize = u32(c + pos + 24);
      const uint64_t name_len = u16(c + pos + 28);
      const uint64_t extra_len = u16(c + pos + 30);
      const uint64_t comment_len = u16(c + pos + 32);
      uint64_t local = u32(c + pos + 42);
      if (cd_size - pos - 46 < name_len + extra_len + comment_len)
        fail("a central directory entry overruns");
      std::string name(reinterpret_cast<const char*>(c + pos + 46), name_len);
      // zip64 extra field: the 0xffffffff fields, in order usize, csize, offset.
      const unsigned char* e = c + pos + 46 + name_len;
      for (uint64_t ep = 0; ep + 4 <= extra_len;) {
        const uint64_t id = u16(e + ep), len = u16(e + ep + 2);
        if (ep + 4 + len > extra_len) fail("a broken zip extra field");
        if (id == 0x0001) {
          uint64_t q = ep + 4;
          auto take = [&](uint64_t& field) {
            if (field != 0xffffffff) return;
            if (q + 8 > ep + 4 + len) fail("a short zip64 extra field");
            field = u64(e + q);
            q += 8;
          };
          take(usize);
          take(csize);
          take(local);
        }
        ep += 4 + len;
      }
      pos += 46 + name_len + extra_len + comment_len;
      if (method != 0 || csize != usize) {
        fail(fmt::format(
            "the record '{}' is compressed; torch.save files store records uncompressed", name));
      }
      unsigned char lh[30];
      read_at(local, lh, 30, "a local file header");
      if (u32(lh) != 0x04034b50)
        fail(fmt::format("the record '{}' has a broken local header", name));
      const uint64_t data = local + 30 + u16(lh + 26) + u16(lh + 28);
      if (data > size || usize > size - data)
        fail(fmt::format("the record '{}' lies outside the file", name));
      if (n == 0) {
        const auto slash = name.find('/');
        if (slash == std::string::npos) fail("the first record has no archive folder");
        prefix_ = name.substr(0, slash + 1);
      }
      records_[name] = Record{data, usize, crc};
    }
    if (prefix_.empty()) fail("the archive is empty");
  }

  std::unique_ptr<ByteSource> src_;
  std::string what_;
  std::string prefix_;
  std::map<std::string, Record> records_;
};

// ------------------------------------------------------------------------------ unpickler

// The unpickler's own objects: shared and mutable, as Python's are, until converted to Values.
struct Obj;
using ObjPtr = std::shared_ptr<Obj>;
struct Obj {
  enum class T {
    None,
    Bool,
    Int,
    Float,
    Str,
    Tensor,
    List,
    Tuple,
    Dict,
    Global,
    Storage
  } t = T::None;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;              // Str, Global ("module.name")
  at::Tensor tensor;          // Tensor, Storage
  std::vector<ObjPtr> items;  // List, Tuple; Dict: k0, v0, k1, v1 ...
  bool ordered = false;
  Obj() = default;
  Obj(const Obj&) = delete;
  // Tears nested containers down iteratively, so a deeply nested (hostile) pickle cannot
  // overflow the stack through recursive destructors.
  ~Obj() {
    std::vector<ObjPtr> pending = std::move(items);
    while (!pending.empty()) {
      ObjPtr o = std::move(pending.back());
      pending.pop_back();
      if (o && o.use_count() == 1) {
        for (auto& c : o->items) pending.push_back(std::move(c));
        o->items.clear();
      }
    }
  }
};

class Unpickler {
 public:
  Unpickler(std::string_view data, const ZipReader& zip, const ReadLimits& limits)
      : data_(data), zip_(zip), limits_(limits) {}

  Value run() {
    ObjPtr result = execute();
    int64_t budget = limits_.max_values;
    return convert(result, 0, budget);
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    zip_.fail(fmt::format("data.pkl: {} (at byte {})", why, pos_));
  }
  const unsigned char* need(uint64_t n) {
    if (n > data_.size() - pos_) fail("unexpected end of the pickle");
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    pos_ += n;
    return p;
  }
  uint64_t le(uint64_t n) {
    const auto* p = need(n);
    uint64_t v = 0;
    for (uint64_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
    return v;
  }
  std::string line() {
    const auto end = data_.find('\n', pos_);
    if (end == std::string_view::npos || end - pos_ > 256) fail("a malformed GLOBAL");
    std::string out(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  static ObjPtr make(Obj::T t) {
    auto o = std::make_shared<Obj>();
    o->t = t;
    return o;
  }
  ObjPtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail("stack underflow");
    ObjPtr o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  ObjPtr& top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail("stack underflow");
    return stack_.back();
  }
  std::vector<ObjPtr> pop_mark() {
    if (marks_.empty()) fail("no MARK");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ObjPtr> out(
        std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
        std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return out;
  }
  void push(ObjPtr o) {
    if (stack_.size() > 1'000'000) fail("the pickle stack grows too deep");
    stack_.push_back(std::move(o));
  }
  void put(uint64_t index) {
    if (stack_.empty()) fail("memoize on an empty stack");
    memo_[index] = stack_.back();
  }
  void get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail(fmt::format("memo entry {} does not exist", index));
    push(it->second);
  }
  void push_str(uint64_t n) {
    const auto* p = need(n);
    auto o = make(Obj::T::Str);
    o->s.assign(reinterpret_cast<const char*>(p), n);
    push(std::move(o));
  }
  static std::string global_name(const ObjPtr& o) { return o->t == Obj::T::Global ? o->s : ""; }

  void check_global(const std::string& name) {
    static const std::array<const char*, 6> allowed = {
        "collections.OrderedDict",         "collections.Counter", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch.Size",          "torch.device"};
    for (const char* a : allowed)
      if (name == a) return;
    if (storage_dtype(name)) return;
    fail(
        fmt::format("it refers to the Python global '{}', which checkpoints may not contain "
                    "(allowed: tensors, containers, numbers, strings)",
                    name));
  }
  static std::optional<at::ScalarType> storage_dtype(const std::string& name) {
    for (const auto& t : kStorageTypes)
      if (name == std::string("torch.") + t.name) return t.dtype;
    return std::nullopt;
  }

  ObjPtr load_storage(const ObjPtr& pid) {
    if (pid->t != Obj::T::Tuple || pid->items.size() != 5 || pid->items[0]->t != Obj::T::Str ||
        pid->items[0]->s != "storage" || pid->items[2]->t != Obj::T::Str ||
        pid->items[4]->t != Obj::T::Int) {
      fail("an unknown persistent id (expected ('storage', type, key, location, numel))");
    }
    const auto dtype = storage_dtype(global_name(pid->items[1]));
    if (!dtype) fail("a storage of unknown type");
    const std::string& key = pid->items[2]->s;
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const int64_t numel = pid->items[4]->i;
    const Record* r = zip_.find("data/" + key);
    if (r == nullptr) fail(fmt::format("the storage record data/{} is missing", key));
    const uint64_t itemsize = c10::elementSize(*dtype);
    if (numel < 0 || static_cast<uint64_t>(numel) > r->size / itemsize) {
      fail(fmt::format("storage {} claims {} elements but its record holds {} bytes", key, numel,
                       r->size));
    }
    at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(*dtype));
    Record part = *r;
    if (part.size == static_cast<uint64_t>(numel) * itemsize) {
      zip_.read_into(part, t.data_ptr(), "data/" + key);
    } else {
      // A record longer than the storage: read (and CRC-check) it all, keep the prefix.
      std::string bytes(part.size, '\0');
      zip_.read_into(part, bytes.data(), "data/" + key);
      if (numel > 0) {
        std::memcpy(t.data_ptr(), bytes.data(), static_cast<std::size_t>(numel) * itemsize);
      }
    }
    auto o = make(Obj::T::Storage);
    o->tensor = t;
    storages_[key] = o;
    return o;
  }

  std::vector<int64_t> ints(const ObjPtr& o, const char* what) {
    if (o->t != Obj::T::Tuple && o->t != Obj::T::List)
      fail(fmt::format("{} must be a tuple", what));
    std::vector<int64_t> out;
    for (const auto& e : o->items) {
      if (e->t != Obj::T::Int) fail(fmt::format("{} must hold ints", what));
      out.push_back(e->i);
    }
    return out;
  }

  ObjPtr rebuild_tensor(const std::vector<ObjPtr>& args) {
    if (args.size() < 4 || args[0]->t != Obj::T::Storage || args[1]->t != Obj::T::Int) {
      fail("_rebuild_tensor_v2 got malformed arguments");
    }
    const at::Tensor& storage = args[0]->tensor;
    const int64_t offset = args[1]->i;
    const auto sizes = ints(args[2], "a tensor size");
    const auto strides = ints(args[3], "a tensor stride");
    if (sizes.size() != strides.size() || sizes.size() > 64)
      fail("tensor size and stride disagree");
    const int64_t numel = storage.numel();
    if (offset < 0 || offset > numel) fail("a tensor offset outside its storage");
    bool empty = false;
    for (auto s : sizes) {
      if (s < 0) fail("a negative tensor size");
      if (s == 0) empty = true;
    }
    if (!empty) {
      // The last element the view touches must lie inside the storage (no overflow).
      int64_t last = offset;
      for (std::size_t k = 0; k < sizes.size(); ++k) {
        if (strides[k] < 0) fail("a negative tensor stride");
        if (strides[k] != 0 && (sizes[k] - 1) > (numel - 1 - last) / strides[k]) {
          fail("a tensor view reaches outside its storage");
        }
        last += (sizes[k] - 1) * strides[k];
      }
      if (last >= numel) fail("a tensor view reaches outside its storage");
    }
    auto o = make(Obj::T::Tensor);
    o->tensor = storage.as_strided(sizes, strides, offset);
    return o;
  }

  ObjPtr reduce(const ObjPtr& callable, const ObjPtr& args) {
    const std::string name = global_name(callable);
    if (name.empty()) fail("REDUCE on something that is not an allowed global");
    if (args->t != Obj::T::Tuple) fail("REDUCE arguments must be a tuple");
    const auto& a = args->items;
    if (name == "collections.OrderedDict" || name == "collections.Counter") {
      auto o = make(Obj::T::Dict);
      o->ordered = name == "collections.OrderedDict";
      if (!a.empty()) {
        if (a.size() != 1 || a[0]->t != Obj::T::Dict) fail(fmt::format("{} takes a dict", name));
        o->items = a[0]->items;
      }
      return o;
    }
    if (name == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(a);
    if (name == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->t != Obj::T::Tensor) fail("_rebuild_parameter takes a tensor");
      return a[0];
    }
    if (name == "torch.Size") {
      if (a.size() != 1) fail("torch.Size takes one tuple");
      auto o = make(Obj::T::Tuple);
      ints(a[0], "torch.Size");
      o->items = a[0]->items;
      return o;
    }
    if (name == "torch.device") {
      auto o = make(Obj::T::Str);
      for (const auto& e : a) {
        if (e->t == Obj::T::Str) o->s += e->s;
        if (e->t == Obj::T::Int) o->s += ":" + std::to_string(e->i);
      }
      return o;
    }
    fail(fmt::format("'{}' cannot be called", name));
  }

  void setitems(const ObjPtr& dict, std::vector<ObjPtr>& kv) {
    if (dict->t != Obj::T::Dict) fail("SETITEM(S) on something that is not a dict");
    if (kv.size() % 2 != 0) fail("SETITEMS with an odd number of items");
    for (std::size_t k = 0; k < kv.size(); k += 2) {
      const auto& key = kv[k];
      if (key->t != Obj::T::Str && key->t != Obj::T::Int && key->t != Obj::T::Bool &&
          key->t != Obj::T::None && key->t != Obj::T::Float) {
        fail("a dict key that is not a str, int, float, bool or None");
      }
      bool replaced = false;
      for (std::size_t j = 0; j + 1 < dict->items.size(); j += 2) {
        const auto& e = dict->items[j];
        if (e->t == key->t && e->s == key->s && e->i == key->i && e->b == key->b &&
            e->d == key->d) {
          dict->items[j + 1] = kv[k + 1];
          replaced = true;
          break;
        }
      }
      if (!replaced) {
        dict->items.push_back(key);
        dict->items.push_back(kv[k + 1]);
      }
    }
  }

  ObjPtr execute() {
    while (true) {
      const unsigned char code = *need(1);
      switch (code) {
        case 0x80:
          need(1);
          break;  // PROTO
        case 0x95:
          need(8);
          break;     // FRAME
        case '.': {  // STOP
          if (stack_.size() != 1 || !marks_.empty()) fail("the pickle ends with a malformed stack");
          return stack_.back();
        }
        case '(':
          marks_.push_back(stack_.size());
          break;
        case '}':
          push(make(Obj::T::Dict));
          break;
        case ']':
          push(make(Obj::T::List));
          break;
        case ')':
          push(make(Obj::T::Tuple));
          break;
        case 'N':
          push(make(Obj::T::None));
          break;
        case 0x88:
        case 0x89: {
          auto o = make(Obj::T::Bool);
          o->b = code == 0x88;
          push(std::move(o));
          break;
        }
        case 'K':
        case 'M':
        case 'J': {
          auto o = make(Obj::T::Int);
          if (code == 'K') o->i = static_cast<int64_t>(le(1));
          if (code == 'M') o->i = static_cast<int64_t>(le(2));
          if (code == 'J') o->i = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
          push(std::move(o));
          break;
        }
        case 0x8a:
        case 0x8b: {  // LONG1 / LONG4
          const uint64_t n = code == 0x8a ? le(1) : le(4);
          if (n > 8) fail("an integer wider than 64 bits");
          const auto* p = need(n);
          uint64_t u = 0;
          for (uint64_t k = 0; k < n; ++k) u |= uint64_t(p[k]) << (8 * k);
          if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
          auto o = make(Obj::T::Int);
          o->i = static_cast<int64_t>(u);
          push(std::move(o));
          break;
        }
        case 'G': {
          const auto* p = need(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
          auto o = make(Obj::T::Float);
          std::memcpy(&o->d, &bits, 8);
          push(std::move(o));
          break;
        }
        case 'X':
          push_str(le(4));
          break;  // BINUNICODE
        case 0x8c:
          push_str(le(1));
          break;  // SHORT_BINUNICODE
        case 0x8d:
          push_str(le(8));
          break;  // BINUNICODE8
        case 'T':
          push_str(le(4));
          break;  // BINSTRING
        case 'U':
          push_str(le(1));
          break;  // SHORT_BINSTRING
        case 'B':
          push_str(le(4));
          break;  // BINBYTES (kept as a string)
        case 'C':
          push_str(le(1));
          break;  // SHORT_BINBYTES
        case 'q':
          put(le(1));
          break;
        case 'r':
          put(le(4));
          break;
        case 0x94:
          put(memo_.size());
          break;  // MEMOIZE
        case 'h':
          get(le(1));
          break;
        case 'j':
          get(le(4));
          break;
        case 'c': {
          std::string module = line();
          std::string name = line();
          auto o = make(Obj::T::Global);
          o->s = module + "." + name;
          check_global(o->s);
          push(std::move(o));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          ObjPtr name = pop();
          ObjPtr module = pop();
          if (name->t != Obj::T::Str || module->t != Obj::T::Str) fail("a malformed STACK_GLOBAL");
          auto o = make(Obj::T::Global);
          o->s = module->s + "." + name->s;
          check_global(o->s);
          push(std::move(o));
          break;
        }
        case 'Q':
          push(load_storage(pop()));
          break;  // BINPERSID
        case 'R': {
          ObjPtr args = pop();
          ObjPtr callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 'b': {  // BUILD: only OrderedDict's attributes (a state dict's _metadata); dropped.
          ObjPtr state = pop();
          ObjPtr& target = top();
          if (target->t != Obj::T::Dict) fail("BUILD on something that is not an OrderedDict");
          (void)state;
          break;
        }
        case 't': {
          auto o = make(Obj::T::Tuple);
          o->items = pop_mark();
          push(std::move(o));
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
          const int n = code - 0x84;
          auto o = make(Obj::T::Tuple);
          o->items.resize(n);
          for (int k = n - 1; k >= 0; --k) o->items[k] = pop();
          push(std::move(o));
          break;
        }
        case 'a': {
          ObjPtr item = pop();
          ObjPtr& list = top();
          if (list->t != Obj::T::List) fail("APPEND on something that is not a list");
          list->items.push_back(std::move(item));
          break;
        }
        case 'e': {
          auto items = pop_mark();
          ObjPtr& list = top();
          if (list->t != Obj::T::List) fail("APPENDS on something that is not a list");
          for (auto& item : items) list->items.push_back(std::move(item));
          break;
        }
        case 's': {
          std::vector<ObjPtr> kv(2);
          kv[1] = pop();
          kv[0] = pop();
          setitems(top(), kv);
          break;
        }
        case 'u': {
          auto kv = pop_mark();
          setitems(top(), kv);
          break;
        }
        case '0':
          pop();
          break;  // POP
        case '2':
          push(top());
          break;  // DUP
        case '1':
          pop_mark();
          break;  // POP_MARK
        default:
          fail(fmt::format("the pickle opcode 0x{:02x} is not one torch.save writes", code));
      }
    }
  }

  Value convert(const ObjPtr& o, int depth, int64_t& budget) {
    if (depth > limits_.max_depth) fail("containers nest too deeply");
    if (--budget < 0) fail("too many values");
    switch (o->t) {
      case Obj::T::None:
        return Value();
      case Obj::T::Bool:
        return Value(o->b);
      case Obj::T::Int:
        return Value(o->i);
      case Obj::T::Float:
        return Value(o->d);
      case Obj::T::Str:
        return Value(o->s);
      case Obj::T::Tensor:
        return Value(o->tensor);
      case Obj::T::List:
      case Obj::T::Tuple: {
        Value::List items;
        items.reserve(o->items.size());
        for (const auto& e : o->items) items.push_back(convert(e, depth + 1, budget));
        return o->t == Obj::T::List ? Value::list(std::move(items))
                                    : Value::tuple(std::move(items));
      }
      case Obj::T::Dict: {
        Value::Items items;
        items.reserve(o->items.size() / 2);
        for (std::size_t k = 0; k + 1 < o->items.size(); k += 2) {
          items.emplace_back(convert(o->items[k], depth + 1, budget),
                             convert(o->items[k + 1], depth + 1, budget));
        }
        return Value::dict(std::move(items), o->ordered);
      }
      case Obj::T::Global:
        fail(fmt::format("the global '{}' is used as a value", o->s));
      case Obj::T::Storage:
        fail("a bare storage is used as a value");
    }
    fail("an unknown object");
  }

  std::string_view data_;
  uint64_t pos_ = 0;
  const ZipReader& zip_;
  ReadLimits limits_;
  std::vector<ObjPtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, ObjPtr> memo_;
  std::unordered_map<std::string, ObjPtr> storages_;
};

Value read_archive(std::unique_ptr<ByteSource> src, const std::string& what,
                   const ReadLimits& limits) {
  ZipReader zip(std::move(src), what, limits);
  if (zip.find("byteorder") != nullptr) {
    const std::string order = zip.read_small("byteorder", 16);
    if (order != "little") zip.fail(fmt::format("byte order '{}' is not supported", order));
  }
  const Record* pkl = zip.find("data.pkl");
  if (pkl == nullptr) zip.fail("there is no data.pkl record");
  const std::string pickle = zip.read_small("data.pkl", uint64_t(1) << 32);
  return Unpickler(pickle, zip, limits).run();
}

std::string errno_text() { return std::strerror(errno); }

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::string to_torch_bytes(const Value& value) {
  std::string out;
  write_archive(value, [&](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  return out;
}

Value from_torch_bytes(std::string_view bytes, const std::string& what, const ReadLimits& limits) {
  return read_archive(std::make_unique<MemorySource>(bytes), what, limits);
}

void make_directories(const std::string& path) {
  if (path.empty() || path == "." || path == "/") return;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return;
    throw std::runtime_error(
        fmt::format("Cannot create the folder {}: a file has that name", path));
  }
  make_directories(parent_dir(path));
  if (::mkdir(path.c_str(), 0777) != 0 && errno != EEXIST) {
    throw std::runtime_error(fmt::format("Cannot create the folder {}: {}", path, errno_text()));
  }
}

void save_torch_file(const Value& value, const std::string& path) {
  const std::string dir = parent_dir(path);
  make_directories(dir);
  const auto slash = path.find_last_of('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::random_device rd;
  const std::string tmp = fmt::format("{}/.{}.tmp.{}.{:08x}", dir, base, ::getpid(), rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error(fmt::format("Cannot write the checkpoint {}: creating {} failed: {}",
                                         path, tmp, errno_text()));
  }
  try {
    std::string error;
    write_archive(value, [&](const void* data, size_t n) -> size_t {
      const char* p = static_cast<const char*>(data);
      size_t left = n;
      while (left > 0) {
        const ssize_t w = ::write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          error = errno_text();
          return n - left;
        }
        p += w;
        left -= static_cast<size_t>(w);
      }
      return n;
    });
    if (::fsync(fd) != 0) throw std::runtime_error(fmt::format("fsync failed: {}", errno_text()));
    if (::close(fd) != 0) {
      ::unlink(tmp.c_str());
      throw std::runtime_error(
          fmt::format("Cannot write the checkpoint {}: {}", path, errno_text()));
    }
  } catch (const std::exception& e) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(
        fmt::format("Cannot write the checkpoint {}: {} (is the disk full?)", path, e.what()));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw std::runtime_error(
        fmt::format("Cannot move the checkpoint into place at {}: {}", path, why));
  }
  // Make the rename itself durable.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

Value load_torch_file(const std::string& path, const ReadLimits& limits) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      throw std::runtime_error(fmt::format("Checkpoint file not found: {}", path));
    throw std::runtime_error(fmt::format("Cannot open the checkpoint {}: {}", path, errno_text()));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(fmt::format("The checkpoint {} is not a regular file", path));
  }
  return read_archive(std::make_unique<FileSource>(fd, static_cast<uint64_t>(st.st_size), path),
                      path, limits);
}

// ------------------------------------------------------------------------------ CheckpointIO

void CheckpointIO::save_checkpoint(const Value&, const std::string&) {
  throw std::logic_error(describe() + " does not implement save_checkpoint");
}
Value CheckpointIO::load_checkpoint(const std::string&) {
  throw std::logic_error(describe() + " does not implement load_checkpoint");
}

void TorchCheckpointIO::save_checkpoint(const Value& checkpoint, const std::string& path) {
  save_torch_file(checkpoint, path);
}
Value TorchCheckpointIO::load_checkpoint(const std::string& path) { return load_torch_file(path); }
void TorchCheckpointIO::remove_checkpoint(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw std::runtime_error(
        fmt::format("Cannot remove the checkpoint {}: {}", path, errno_text()));
  }
}

}  // namespace cppfabric::checkpoint
