#include "checkpoint/dcp_metadata.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "checkpoint/pickle_machine.hpp"
#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint::detail {
namespace {

constexpr const char* kMetadataModule = "torch.distributed.checkpoint.metadata";
constexpr const char* kFilesystemModule = "torch.distributed.checkpoint.filesystem";

struct DtypeName {
  const char* name;
  c10::ScalarType dtype;
};
constexpr std::array<DtypeName, 12> kDtypes{{
    {"float32", c10::ScalarType::Float},
    {"float64", c10::ScalarType::Double},
    {"float16", c10::ScalarType::Half},
    {"bfloat16", c10::ScalarType::BFloat16},
    {"int64", c10::ScalarType::Long},
    {"int32", c10::ScalarType::Int},
    {"int16", c10::ScalarType::Short},
    {"int8", c10::ScalarType::Char},
    {"uint8", c10::ScalarType::Byte},
    {"bool", c10::ScalarType::Bool},
    {"complex64", c10::ScalarType::ComplexFloat},
    {"complex128", c10::ScalarType::ComplexDouble},
}};

// ------------------------------------------------------------------------------------ writer

class Writer {
 public:
  std::string take() { return std::move(out_); }
  void op(char c) { out_ += c; }
  void global(const char* module, const char* name) {
    op('c');
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }
  void str(const std::string& s) {
    op('X');
    const auto n = static_cast<uint32_t>(s.size());
    for (int i = 0; i < 4; ++i) out_ += static_cast<char>((n >> (8 * i)) & 0xff);
    out_ += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out_ += static_cast<char>(v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      const auto u = static_cast<uint32_t>(static_cast<int32_t>(v));
      for (int i = 0; i < 4; ++i) out_ += static_cast<char>((u >> (8 * i)) & 0xff);
    } else {
      op('\x8a');  // LONG1, 8 bytes two's complement (always valid, if not the shortest)
      out_ += static_cast<char>(8);
      const auto u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) out_ += static_cast<char>((u >> (8 * i)) & 0xff);
    }
  }
  // An instance of a dataclass as pickle writes it: cls.__new__(cls), then BUILD with its state.
  void newobj(const char* module, const char* name) {
    global(module, name);
    op(')');
    op('\x81');
  }
  void size(const std::vector<int64_t>& values) {
    global("torch", "Size");
    op('(');
    for (auto v : values) integer(v);
    op('t');
    op('\x85');
    op('R');
  }
  void storage(const DcpStorage& s) {
    newobj(kFilesystemModule, "_StorageInfo");
    op('}');
    op('(');
    str("relative_path");
    str(s.relative_path);
    str("offset");
    integer(s.offset);
    str("length");
    integer(s.length);
    op('u');
    op('b');
  }
  void index(const std::string& fqn, const std::vector<int64_t>* offsets, int64_t position) {
    newobj(kMetadataModule, "MetadataIndex");
    op('}');
    op('(');
    str("fqn");
    str(fqn);
    if (offsets != nullptr) {
      str("offset");
      size(*offsets);
      str("index");
      integer(position);
    } else {
      str("index");
      op('N');
    }
    op('u');
    op('b');
  }
  void entry_metadata(const DcpEntry& e) {
    if (!e.is_tensor) {
      newobj(kMetadataModule, "BytesStorageMetadata");
      return;
    }
    newobj(kMetadataModule, "TensorStorageMetadata");
    op('}');
    op('(');
    str("properties");
    // TensorProperties.__getstate__: (dtype, layout, requires_grad, memory_format, pin_memory)
    newobj(kMetadataModule, "TensorProperties");
    op('(');
    global("torch", dcp_dtype_name(e.dtype));
    global("torch.serialization", "_get_layout");
    str("torch.strided");
    op('\x85');
    op('R');
    op(e.requires_grad ? '\x88' : '\x89');
    global(kMetadataModule, "_MEM_FORMAT_ENCODING");
    integer(0);  // TORCH_CONTIGUOUS_FORMAT
    op('\x85');
    op('R');
    op('\x89');
    op('t');
    op('b');
    str("size");
    size(e.size);
    str("chunks");
    op(']');
    if (!e.chunks.empty()) {
      op('(');
      for (const auto& c : e.chunks) {
        newobj(kMetadataModule, "ChunkStorageMetadata");
        op('}');
        op('(');
        str("offsets");
        size(c.offsets);
        str("sizes");
        size(c.sizes);
        op('u');
        op('b');
      }
      op('e');
    }
    op('u');
    op('b');
  }

 private:
  std::string out_;
};

// ------------------------------------------------------------------------------------ reader

struct Obj;
using ObjPtr = std::shared_ptr<Obj>;
struct Obj {
  enum class T { None, Bool, Int, Float, Str, List, Tuple, Dict, Global, Instance } t = T::None;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;              // Str; Global ("module.name"); Instance (its class)
  std::vector<ObjPtr> items;  // List, Tuple; Dict: k0, v0, k1, v1 ...
  ObjPtr state;               // Instance: what BUILD gave it
  std::unique_ptr<std::unordered_map<std::string, std::size_t>> str_keys;  // Dict
};

const char* type_name(const ObjPtr& o) {
  switch (o->t) {
    case Obj::T::None:
      return "None";
    case Obj::T::Bool:
      return "bool";
    case Obj::T::Int:
      return "int";
    case Obj::T::Float:
      return "float";
    case Obj::T::Str:
      return "str";
    case Obj::T::List:
      return "list";
    case Obj::T::Tuple:
      return "tuple";
    case Obj::T::Dict:
      return "dict";
    case Obj::T::Global:
      return "global";
    case Obj::T::Instance:
      return "object";
  }
  return "?";
}

class Reader : PickleMachine<Reader, Obj> {
  friend class PickleMachine<Reader, Obj>;

 public:
  Reader(std::string_view data, std::string what) : PickleMachine(data), what_(std::move(what)) {
    budget_ = 64 * static_cast<uint64_t>(data.size()) + 10'000'000;
  }

  DcpMetadata run() {
    ObjPtr root = execute();
    return interpret(root);
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(
        fmt::format("Cannot read the sharded checkpoint metadata {}: {}", what_, why));
  }
  [[noreturn]] void fail_at(const std::string& why) const {
    fail(fmt::format("{} (at byte {})", why, pos_));
  }
  void charge(uint64_t n) {
    if (n > budget_) fail("it describes more work than its size allows (shared references?)");
    budget_ -= n;
  }

  static bool is_class(const std::string& name) {
    static const std::array<const char*, 8> classes = {
        "torch.distributed.checkpoint.metadata.Metadata",
        "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
        "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
        "torch.distributed.checkpoint.metadata.TensorProperties",
        "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
        "torch.distributed.checkpoint.metadata.MetadataIndex",
        "torch.distributed.checkpoint.metadata.StorageMeta",
        "torch.distributed.checkpoint.filesystem._StorageInfo"};
    for (const char* c : classes)
      if (name == c) return true;
    return false;
  }
  static std::optional<c10::ScalarType> dtype_of(const std::string& global) {
    for (const auto& d : kDtypes)
      if (global == std::string("torch.") + d.name) return d.dtype;
    return std::nullopt;
  }
  void check_global(const std::string& name) {
    if (is_class(name) || dtype_of(name) || name == "torch.Size" ||
        name == "torch.serialization._get_layout" ||
        name == "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING" ||
        name == "pathlib.PosixPath") {
      return;
    }
    fail_at(fmt::format(
        "it refers to the Python global '{}', which a distributed-checkpoint .metadata may not "
        "contain (allowed: the torch.distributed.checkpoint metadata classes, torch.Size, torch "
        "dtypes, pathlib.PosixPath)",
        name));
  }

  ObjPtr reduce(const ObjPtr& callable, const ObjPtr& args) {
    if (callable->t != Obj::T::Global) fail_at("REDUCE on something that is not a global");
    if (args->t != Obj::T::Tuple) fail_at("REDUCE arguments must be a tuple");
    const std::string& name = callable->s;
    const auto& a = args->items;
    if (name == "torch.Size") {
      if (a.size() != 1 || a[0]->t != Obj::T::Tuple) fail_at("torch.Size takes one tuple");
      charge(a[0]->items.size());
      for (const auto& e : a[0]->items)
        if (e->t != Obj::T::Int) fail_at("torch.Size holds something that is not an int");
      auto o = make(Obj::T::Tuple);
      o->items = a[0]->items;
      return o;
    }
    if (name == "torch.serialization._get_layout") {
      if (a.size() != 1 || a[0]->t != Obj::T::Str) fail_at("_get_layout takes one str");
      auto o = make(Obj::T::Str);
      o->s = a[0]->s;
      return o;
    }
    if (name == "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING") {
      if (a.size() != 1 || a[0]->t != Obj::T::Int) fail_at("_MEM_FORMAT_ENCODING takes one int");
      return a[0];
    }
    if (name == "pathlib.PosixPath") {
      auto o = make(Obj::T::Str);
      for (const auto& e : a) {
        if (e->t != Obj::T::Str) fail_at("PosixPath takes strs");
        charge(e->s.size());
        if (!o->s.empty()) o->s += '/';
        o->s += e->s;
      }
      return o;
    }
    fail_at(fmt::format("'{}' cannot be called", name));
  }

  void setitems(const ObjPtr& dict, std::vector<ObjPtr>& kv) {
    if (dict->t != Obj::T::Dict) fail_at("SETITEM(S) on something that is not a dict");
    if (kv.size() % 2 != 0) fail_at("SETITEMS with an odd number of items");
    if (!dict->str_keys)
      dict->str_keys = std::make_unique<std::unordered_map<std::string, size_t>>();
    for (std::size_t k = 0; k < kv.size(); k += 2) {
      if (kv[k]->t == Obj::T::Str) {
        // A repeated key replaces the value and keeps its position, as Python's dict does.
        const auto [it, inserted] = dict->str_keys->try_emplace(kv[k]->s, dict->items.size());
        if (!inserted) {
          dict->items[it->second + 1] = std::move(kv[k + 1]);
          continue;
        }
      }
      dict->items.push_back(std::move(kv[k]));
      dict->items.push_back(std::move(kv[k + 1]));
    }
  }

  ObjPtr execute() {
    while (true) {
      const unsigned char code = *need(1);
      if (common_opcode(code)) continue;
      switch (code) {
        case '.':
          if (stack_.size() != 1 || !marks_.empty()) fail_at("the pickle ends with a bad stack");
          return stack_.back();
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
          ObjPtr args = pop();
          ObjPtr cls = pop();
          if (cls->t != Obj::T::Global || !is_class(cls->s))
            fail_at(fmt::format("NEWOBJ of '{}', which is not a metadata class", cls->s));
          if (args->t != Obj::T::Tuple || !args->items.empty())
            fail_at(fmt::format("NEWOBJ of {} with arguments", cls->s));
          auto o = make(Obj::T::Instance);
          o->s = cls->s;
          push(std::move(o));
          break;
        }
        case 'b': {  // BUILD
          ObjPtr state = pop();
          ObjPtr& target = top();
          if (target->t != Obj::T::Instance) fail_at("BUILD on something that is not an object");
          if (target->state) fail_at("BUILD twice on one object");
          target->state = std::move(state);
          break;
        }
        default:
          fail_at(fmt::format("the pickle opcode 0x{:02x} is not one a .metadata file uses", code));
      }
    }
  }

  // --- from objects to DcpMetadata
  const ObjPtr& instance_state(const ObjPtr& o, const char* cls, const char* what) {
    if (o->t != Obj::T::Instance || o->s != std::string(kMetadataModule) + "." + cls) {
      if (!(o->t == Obj::T::Instance && std::string(cls) == "_StorageInfo" &&
            o->s == std::string(kFilesystemModule) + "._StorageInfo")) {
        fail(fmt::format("{} is a {} where a {} was expected", what,
                         o->t == Obj::T::Instance ? o->s : type_name(o), cls));
      }
    }
    static const ObjPtr none = make(Obj::T::None);
    return o->state ? o->state : none;
  }
  // The value of `field` in an instance's dict state; nullptr when absent.
  const Obj* field(const ObjPtr& state, const char* name, const char* what) {
    if (state->t == Obj::T::None) return nullptr;
    if (state->t != Obj::T::Dict) fail(fmt::format("the state of {} is not a dict", what));
    if (state->str_keys) {
      auto it = state->str_keys->find(name);
      if (it != state->str_keys->end()) return state->items[it->second + 1].get();
    }
    return nullptr;
  }
  const Obj& required(const ObjPtr& state, const char* name, const char* what) {
    const Obj* f = field(state, name, what);
    if (f == nullptr) fail(fmt::format("{} has no '{}'", what, name));
    return *f;
  }
  int64_t as_int(const Obj& o, const std::string& what) {
    if (o.t != Obj::T::Int) fail(fmt::format("{} is not an int", what));
    return o.i;
  }
  std::vector<int64_t> as_ints(const Obj& o, const std::string& what) {
    if (o.t != Obj::T::Tuple && o.t != Obj::T::List)
      fail(fmt::format("{} is not a torch.Size", what));
    if (o.items.size() > 64) fail(fmt::format("{} has more than 64 dimensions", what));
    charge(o.items.size() + 1);
    std::vector<int64_t> out;
    for (const auto& e : o.items) {
      if (e->t != Obj::T::Int) fail(fmt::format("{} holds a {}", what, type_name(e)));
      out.push_back(e->i);
    }
    return out;
  }

  DcpStorage storage_info(const ObjPtr& o, const std::string& key) {
    const std::string what = fmt::format("the storage of '{}'", key);
    const ObjPtr& st = instance_state(o, "_StorageInfo", what.c_str());
    DcpStorage s;
    const Obj& path = required(st, "relative_path", what.c_str());
    if (path.t != Obj::T::Str) fail(what + ": relative_path is not a str");
    s.relative_path = path.s;
    if (s.relative_path.empty() || s.relative_path == "." || s.relative_path == ".." ||
        s.relative_path.find('/') != std::string::npos ||
        s.relative_path.find('\0') != std::string::npos) {
      fail(fmt::format("{} names the file '{}', which is not a plain file name in the folder", what,
                       s.relative_path));
    }
    s.offset = as_int(required(st, "offset", what.c_str()), what + ": offset");
    s.length = as_int(required(st, "length", what.c_str()), what + ": length");
    if (s.offset < 0 || s.length < 0 || s.offset > INT64_MAX - s.length)
      fail(fmt::format("{} has offset {} and length {}", what, s.offset, s.length));
    if (const Obj* t = field(st, "transform_descriptors", what.c_str())) {
      if (t->t != Obj::T::None &&
          !((t->t == Obj::T::List || t->t == Obj::T::Tuple) && t->items.empty())) {
        fail(what + " uses storage transforms (compression, ...), which cppfabric cannot read");
      }
    }
    return s;
  }

  c10::ScalarType dtype_from(const Obj& o, const std::string& key) {
    if (o.t == Obj::T::Global) {
      if (auto d = dtype_of(o.s)) return *d;
    }
    fail(fmt::format("the dtype of '{}' is not a torch dtype cppfabric supports", key));
  }

  void tensor_properties(const Obj& props_obj, DcpEntry& e) {
    if (props_obj.t != Obj::T::Instance ||
        props_obj.s != std::string(kMetadataModule) + ".TensorProperties" || !props_obj.state) {
      fail(fmt::format("the properties of '{}' are not a TensorProperties", e.key));
    }
    const ObjPtr& st = props_obj.state;
    if (st->t == Obj::T::Tuple) {  // __getstate__: (dtype, layout, requires_grad, fmt, pin)
      if (st->items.size() != 5) fail(fmt::format("the properties of '{}' are malformed", e.key));
      e.dtype = dtype_from(*st->items[0], e.key);
      const Obj& layout = *st->items[1];
      if (layout.t != Obj::T::Str || layout.s != "torch.strided")
        fail(fmt::format("'{}' is not a strided (dense) tensor", e.key));
      if (st->items[2]->t == Obj::T::Bool) e.requires_grad = st->items[2]->b;
    } else if (st->t == Obj::T::Dict) {  // older torch: the dataclass's own dict
      e.dtype = dtype_from(required(st, "dtype", "TensorProperties"), e.key);
    } else {
      fail(fmt::format("the properties of '{}' are malformed", e.key));
    }
  }

  static bool overlap(const DcpChunk& a, const DcpChunk& b) {
    for (std::size_t d = 0; d < a.offsets.size(); ++d) {
      if (a.sizes[d] == 0 || b.sizes[d] == 0) return false;
      if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d])
        return false;
    }
    return true;
  }

  void validate_chunks(DcpEntry& e) {
    for (auto s : e.size)
      if (s < 0) fail(fmt::format("'{}' has a negative size", e.key));
    uint64_t numel = 1;
    for (auto s : e.size)
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(s), &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX))
        fail(fmt::format("the element count of '{}' overflows", e.key));
    for (std::size_t k = 0; k < e.chunks.size(); ++k) {
      const auto& c = e.chunks[k];
      if (c.offsets.size() != e.size.size() || c.sizes.size() != e.size.size())
        fail(fmt::format("chunk {} of '{}' has {} dimensions, the tensor {}", k, e.key,
                         c.offsets.size(), e.size.size()));
      for (std::size_t d = 0; d < e.size.size(); ++d) {
        if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > e.size[d] - c.sizes[d])
          fail(fmt::format("chunk {} of '{}' (offsets {}, sizes {}) lies outside its size {}", k,
                           e.key, fmt::join(c.offsets, ", "), fmt::join(c.sizes, ", "),
                           fmt::join(e.size, ", ")));
      }
    }
    // No two chunks overlap (a sweep over the first dimension; pairs charged to the budget).
    if (e.size.empty() || e.chunks.size() < 2) {
      if (e.size.empty() && e.chunks.size() > 1)
        fail(fmt::format("the scalar '{}' has {} chunks", e.key, e.chunks.size()));
      return;
    }
    std::vector<std::size_t> order(e.chunks.size());
    for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return e.chunks[a].offsets[0] < e.chunks[b].offsets[0];
    });
    for (std::size_t x = 0; x < order.size(); ++x) {
      const auto& a = e.chunks[order[x]];
      for (std::size_t y = x + 1; y < order.size(); ++y) {
        const auto& b = e.chunks[order[y]];
        if (b.offsets[0] >= a.offsets[0] + a.sizes[0]) break;
        charge(1);
        if (overlap(a, b))
          fail(fmt::format("chunks {} and {} of '{}' overlap", order[x], order[y], e.key));
      }
    }
  }

  DcpMetadata interpret(const ObjPtr& root) {
    const ObjPtr& st = instance_state(root, "Metadata", "the pickle");
    DcpMetadata md;
    const Obj& sdm = required(st, "state_dict_metadata", "Metadata");
    if (sdm.t != Obj::T::Dict) fail("state_dict_metadata is not a dict");
    // storage_data: (fqn, offsets or none) -> storage
    std::map<std::pair<std::string, std::optional<std::vector<int64_t>>>, DcpStorage> storage;
    const Obj& sd = required(st, "storage_data", "Metadata");
    if (sd.t != Obj::T::Dict) fail("storage_data is not a dict");
    for (std::size_t k = 0; k + 1 < sd.items.size(); k += 2) {
      charge(4);
      const ObjPtr& idx_state = instance_state(sd.items[k], "MetadataIndex", "a storage_data key");
      const Obj& fqn = required(idx_state, "fqn", "MetadataIndex");
      if (fqn.t != Obj::T::Str) fail("a MetadataIndex fqn is not a str");
      std::optional<std::vector<int64_t>> offsets;
      if (const Obj* off = field(idx_state, "offset", "MetadataIndex");
          off != nullptr && off->t != Obj::T::None) {
        offsets = as_ints(*off, fmt::format("the offset of a storage_data key '{}'", fqn.s));
      }
      storage[{fqn.s, offsets}] = storage_info(sd.items[k + 1], fqn.s);
    }
    // planner_data: fqn -> path tuple
    std::unordered_map<std::string, std::vector<DcpPathElement>> paths;
    if (const Obj* pd = field(st, "planner_data", "Metadata"); pd && pd->t != Obj::T::None) {
      if (pd->t != Obj::T::Dict) fail("planner_data is not a dict");
      for (std::size_t k = 0; k + 1 < pd->items.size(); k += 2) {
        const Obj& key = *pd->items[k];
        const Obj& path = *pd->items[k + 1];
        if (key.t != Obj::T::Str) fail("a planner_data key is not a str");
        if (path.t != Obj::T::Tuple && path.t != Obj::T::List)
          fail(fmt::format("the planner_data of '{}' is not a tuple", key.s));
        if (path.items.empty() || path.items.size() > 512)
          fail(fmt::format("the planner_data of '{}' has {} elements", key.s, path.items.size()));
        charge(path.items.size() + 1);
        std::vector<DcpPathElement> elements;
        for (const auto& p : path.items) {
          if (p->t == Obj::T::Str) {
            charge(p->s.size());
            elements.push_back({p->s, std::nullopt});
          } else if (p->t == Obj::T::Int && p->i >= 0 && p->i < 100'000'000) {
            elements.push_back({std::to_string(p->i), p->i});
          } else {
            fail(
                fmt::format("the planner_data of '{}' holds a {} where a str or a list index "
                            "was expected",
                            key.s, type_name(p)));
          }
        }
        if (elements.front().index)
          fail(fmt::format("the planner_data of '{}' starts with an int", key.s));
        paths[key.s] = std::move(elements);
      }
    }
    for (std::size_t k = 0; k + 1 < sdm.items.size(); k += 2) {
      charge(4);
      const Obj& key = *sdm.items[k];
      if (key.t != Obj::T::Str) fail("a state_dict_metadata key is not a str");
      DcpEntry e;
      e.key = key.s;
      if (auto it = paths.find(e.key); it != paths.end()) e.path = it->second;
      const ObjPtr& v = sdm.items[k + 1];
      if (v->t == Obj::T::Instance &&
          v->s == std::string(kMetadataModule) + ".BytesStorageMetadata") {
        auto it = storage.find({e.key, std::nullopt});
        if (it == storage.end())
          fail(fmt::format("the item '{}' has no storage_data entry", e.key));
        e.storage = it->second;
      } else {
        const std::string what = fmt::format("the metadata of '{}'", e.key);
        const ObjPtr& ts = instance_state(v, "TensorStorageMetadata", what.c_str());
        e.is_tensor = true;
        tensor_properties(required(ts, "properties", what.c_str()), e);
        e.size =
            as_ints(required(ts, "size", what.c_str()), fmt::format("the size of '{}'", e.key));
        const Obj& chunks = required(ts, "chunks", what.c_str());
        if (chunks.t != Obj::T::List && chunks.t != Obj::T::Tuple)
          fail(fmt::format("the chunks of '{}' are not a list", e.key));
        for (std::size_t c = 0; c < chunks.items.size(); ++c) {
          charge(4);
          const std::string cwhat = fmt::format("chunk {} of '{}'", c, e.key);
          const ObjPtr& cs = instance_state(chunks.items[c], "ChunkStorageMetadata", cwhat.c_str());
          DcpChunk chunk;
          chunk.offsets = as_ints(required(cs, "offsets", cwhat.c_str()), cwhat + ": offsets");
          chunk.sizes = as_ints(required(cs, "sizes", cwhat.c_str()), cwhat + ": sizes");
          auto it = storage.find({e.key, chunk.offsets});
          if (it == storage.end())
            fail(fmt::format("{} (offsets {}) has no storage_data entry", cwhat,
                             fmt::join(chunk.offsets, ", ")));
          chunk.storage = it->second;
          e.chunks.push_back(std::move(chunk));
        }
        validate_chunks(e);
      }
      md.entries.push_back(std::move(e));
    }
    if (const Obj* version = field(st, "version", "Metadata");
        version != nullptr && version->t == Obj::T::Str) {
      md.version = version->s;
    }
    return md;
  }

  std::string what_;
  uint64_t budget_ = 0;
};

}  // namespace

const char* dcp_dtype_name(c10::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  throw std::invalid_argument(fmt::format(
      "Cannot save a tensor of dtype {} in a sharded checkpoint (supported: float32, float64, "
      "float16, bfloat16, int64, int32, int16, int8, uint8, bool, complex64, complex128)",
      c10::toString(dtype)));
}

std::string write_dcp_metadata(const DcpMetadata& md) {
  Writer w;
  w.op('\x80');
  w.op('\x02');
  w.newobj(kMetadataModule, "Metadata");
  w.op('}');
  w.op('(');
  w.str("state_dict_metadata");
  w.op('}');
  if (!md.entries.empty()) {
    w.op('(');
    for (const auto& e : md.entries) {
      w.str(e.key);
      w.entry_metadata(e);
    }
    w.op('u');
  }
  w.str("planner_data");
  w.op('}');
  if (!md.entries.empty()) {
    w.op('(');
    for (const auto& e : md.entries) {
      if (e.path.empty()) continue;  // no nesting recorded: loaders keep the flat key
      w.str(e.key);
      w.op('(');
      for (const auto& p : e.path) {
        if (p.index) {
          w.integer(*p.index);
        } else {
          w.str(p.key);
        }
      }
      w.op('t');
    }
    w.op('u');
  }
  w.str("storage_data");
  w.op('}');
  if (!md.entries.empty()) {
    w.op('(');
    for (const auto& e : md.entries) {
      if (e.is_tensor) {
        for (std::size_t c = 0; c < e.chunks.size(); ++c) {
          w.index(e.key, &e.chunks[c].offsets, static_cast<int64_t>(c));
          w.storage(e.chunks[c].storage);
        }
      } else {
        w.index(e.key, nullptr, 0);
        w.storage(e.storage);
      }
    }
    w.op('u');
  }
  w.str("storage_meta");
  w.newobj(kMetadataModule, "StorageMeta");
  w.op('}');
  w.op('(');
  w.str("checkpoint_id");
  w.op('N');
  w.str("save_id");
  if (md.save_id.empty()) {
    w.op('N');
  } else {
    w.str(md.save_id);
  }
  w.str("load_id");
  w.op('N');
  w.str("modules");
  w.op(']');
  w.op('u');
  w.op('b');
  w.str("version");
  w.str(md.version);
  w.op('u');
  w.op('b');
  w.op('.');
  return w.take();
}

DcpMetadata read_dcp_metadata(std::string_view bytes, const std::string& what) {
  try {
    return Reader(bytes, what).run();
  } catch (const std::bad_alloc&) {
    throw std::runtime_error(fmt::format(
        "Cannot read the sharded checkpoint metadata {}: out of memory while parsing it", what));
  }
}

}  // namespace cppfabric::checkpoint::detail
