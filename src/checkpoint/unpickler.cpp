#include "checkpoint/unpickler.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "checkpoint/pickle_machine.hpp"
#include "checkpoint/pickler.hpp"
#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint::detail {
namespace {

// The unpickler's own objects: shared and mutable, as Python's are, until converted to Values.
struct Obj;
using ObjPtr = std::shared_ptr<Obj>;

// Dict keys (scalars, never mutated once built) hashed and compared by content, with the same
// type-exact equality as Value::scalar_equals.
struct KeyHash {
  std::size_t operator()(const Obj* k) const;
};
struct KeyEq {
  bool operator()(const Obj* a, const Obj* b) const;
};
// key -> the position of the key in Obj::items.
using DictIndex = std::unordered_map<const Obj*, std::size_t, KeyHash, KeyEq>;

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
  std::unique_ptr<DictIndex> index;  // Dict: the keys in `items`, for O(1) SETITEM(S)
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

std::size_t KeyHash::operator()(const Obj* k) const {
  switch (k->t) {
    case Obj::T::Str:
      return std::hash<std::string>()(k->s) ^ 0x9e3779b97f4a7c15ull;
    case Obj::T::Int:
      return std::hash<int64_t>()(k->i);
    case Obj::T::Bool:
      return k->b ? 0x51 : 0x50;
    case Obj::T::Float:
      return std::hash<double>()(k->d == 0.0 ? 0.0 : k->d);  // 0.0 == -0.0
    default:
      return 0x4e;  // None
  }
}
bool KeyEq::operator()(const Obj* a, const Obj* b) const {
  if (a->t != b->t) return false;
  switch (a->t) {
    case Obj::T::Str:
      return a->s == b->s;
    case Obj::T::Int:
      return a->i == b->i;
    case Obj::T::Bool:
      return a->b == b->b;
    case Obj::T::Float:
      return a->d == b->d;
    default:
      return true;
  }
}

class Unpickler : PickleMachine<Unpickler, Obj> {
  friend class PickleMachine<Unpickler, Obj>;

 public:
  Unpickler(std::string_view data, const ZipReader& zip, const ReadLimits& limits)
      : PickleMachine(data), zip_(zip), limits_(limits) {
    // What the pickle may expand to: Values built plus string bytes copied. Without shared
    // references that is at most the pickle's size (every value costs an opcode, every string
    // byte is in the file); memo references (BINGET) are what can multiply it.
    const uint64_t factor = static_cast<uint64_t>(std::max<int64_t>(limits.max_expansion, 1));
    expansion_limit_ = data.size() > (uint64_t(1) << 40) / factor
                           ? uint64_t(1) << 40
                           : factor * data.size() + kExpansionFloor;
  }

  Value run() {
    ObjPtr result = execute();
    check_expansion(result);
    int64_t budget = limits_.max_values;
    return convert(result, 0, budget);
  }

 private:
  static constexpr uint64_t kExpansionFloor = 65536;

  [[noreturn]] void expansion_error(const char* what) const {
    fail(fmt::format(
        "{} expands to more than {} values and string bytes from a {}-byte pickle: shared "
        "(memoized) references would be copied that many times. The limit is "
        "ReadLimits::max_expansion = {} times the pickle size plus {}",
        what, expansion_limit_, data_.size(), limits_.max_expansion, kExpansionFloor));
  }
  // Work done copying while unpickling (OrderedDict(d), torch.Size(t), ...), bounded as the
  // expansion is.
  void charge(uint64_t units) {
    work_ += units;
    if (work_ > expansion_limit_) expansion_error("copying shared containers");
  }
  // The size of the Value tree `root` will become, computed on the object graph (shared nodes
  // once each) before anything is built; fails past the expansion limit or on a cycle.
  void check_expansion(const ObjPtr& root) const {
    const uint64_t cap = expansion_limit_ + 1;
    auto add = [cap](uint64_t a, uint64_t b) { return std::min(a + b, cap); };  // a, b <= cap
    auto own = [](const Obj* o) -> uint64_t {
      return 1 + (o->t == Obj::T::Str ? static_cast<uint64_t>(o->s.size()) : 0);
    };
    struct Frame {
      const Obj* o;
      std::size_t next;
      uint64_t sum;
    };
    std::unordered_map<const Obj*, uint64_t> done;
    std::unordered_set<const Obj*> active;
    std::vector<Frame> stack{{root.get(), 0, own(root.get())}};
    active.insert(root.get());
    while (!stack.empty()) {
      Frame& f = stack.back();
      if (f.sum > expansion_limit_) expansion_error("the pickle");
      if (f.next < f.o->items.size()) {
        const Obj* c = f.o->items[f.next++].get();
        if (c->items.empty()) {
          f.sum = add(f.sum, own(c));
        } else if (auto it = done.find(c); it != done.end()) {
          f.sum = add(f.sum, it->second);
        } else {
          if (!active.insert(c).second) fail("a container contains itself (a reference cycle)");
          stack.push_back({c, 0, own(c)});  // f is invalid from here on
        }
        continue;
      }
      const Frame finished = f;
      stack.pop_back();
      active.erase(finished.o);
      done.emplace(finished.o, finished.sum);
      if (!stack.empty()) stack.back().sum = add(stack.back().sum, finished.sum);
    }
  }

  [[noreturn]] void fail(const std::string& why) const {
    zip_.fail(fmt::format("data.pkl: {} (at byte {})", why, pos_));
  }
  [[noreturn]] void fail_at(const std::string& why) const { fail(why); }
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
    const Record& part = *r;
    const bool exact = part.size == static_cast<uint64_t>(numel) * itemsize;
    at::Tensor t;
    if (exact && numel > 0 && zip_.mapped() && part.data_offset % itemsize == 0 &&
        part.size >= static_cast<uint64_t>(std::max<int64_t>(limits_.map_min_record_bytes, 0))) {
      // A mapped file: the record itself becomes the tensor's memory (no copy); the tensor
      // keeps the mapping alive.
      std::shared_ptr<const void> keep;
      const void* p = zip_.map_record(part, "data/" + key, &keep);
      t = at::from_blob(
          const_cast<void*>(p), {numel}, [keep](void*) {}, at::TensorOptions().dtype(*dtype));
    } else if (exact) {
      t = at::empty({numel}, at::TensorOptions().dtype(*dtype));
      zip_.read_into(part, t.data_ptr(), "data/" + key);
    } else {
      // A record longer than the storage: read (and CRC-check) it all, keep the prefix.
      t = at::empty({numel}, at::TensorOptions().dtype(*dtype));
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
    charge(o->items.size());
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
    // The element count must fit int64 (LibTorch multiplies every size, zeros included, and
    // raises its own error otherwise).
    uint64_t count = 1;
    bool overflow = false;
    for (auto s : sizes) {
      if (s < 0) fail("a negative tensor size");
      overflow = overflow || __builtin_mul_overflow(count, static_cast<uint64_t>(s), &count);
    }
    if (overflow || count > static_cast<uint64_t>(INT64_MAX)) {
      std::string shown;
      for (auto s : sizes) shown += (shown.empty() ? "" : ", ") + std::to_string(s);
      fail(fmt::format("a tensor of size ({}) whose element count overflows 64 bits", shown));
    }
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
        charge(a[0]->items.size());
        o->items = a[0]->items;
        if (a[0]->index) o->index = std::make_unique<DictIndex>(*a[0]->index);
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
      charge(a.size());
      for (const auto& e : a) {
        if (e->t == Obj::T::Str) charge(e->s.size());
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
    if (!dict->index) dict->index = std::make_unique<DictIndex>();
    DictIndex& index = *dict->index;
    for (std::size_t k = 0; k < kv.size(); k += 2) {
      const auto& key = kv[k];
      if (key->t != Obj::T::Str && key->t != Obj::T::Int && key->t != Obj::T::Bool &&
          key->t != Obj::T::None && key->t != Obj::T::Float) {
        fail("a dict key that is not a str, int, float, bool or None");
      }
      // A repeated key replaces the value and keeps the first position, as Python's dict does.
      const auto [it, inserted] = index.try_emplace(key.get(), dict->items.size());
      if (inserted) {
        dict->items.push_back(key);
        dict->items.push_back(std::move(kv[k + 1]));
      } else {
        dict->items[it->second + 1] = std::move(kv[k + 1]);
      }
    }
  }

  ObjPtr execute() {
    while (true) {
      const unsigned char code = *need(1);
      if (common_opcode(code)) continue;
      switch (code) {
        case '.': {  // STOP
          if (stack_.size() != 1 || !marks_.empty()) fail("the pickle ends with a malformed stack");
          return stack_.back();
        }
        case 'Q':
          push(load_storage(pop()));
          break;     // BINPERSID
        case 'b': {  // BUILD: only OrderedDict's attributes (a state dict's _metadata); dropped.
          ObjPtr state = pop();
          ObjPtr& target = top();
          if (target->t != Obj::T::Dict) fail("BUILD on something that is not an OrderedDict");
          (void)state;
          break;
        }
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

  const ZipReader& zip_;
  ReadLimits limits_;
  std::unordered_map<std::string, ObjPtr> storages_;
  uint64_t expansion_limit_ = 0;
  uint64_t work_ = 0;
};

}  // namespace

Value unpickle(std::string_view pickle, const ZipReader& zip, const ReadLimits& limits) {
  return Unpickler(pickle, zip, limits).run();
}

}  // namespace cppfabric::checkpoint::detail
