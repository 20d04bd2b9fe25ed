// Value (include/cppfabric/value.hpp).
#include "cppfabric/value.hpp"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric {

// Out of line on purpose (see value.hpp).
Value::Value(const Value& other) = default;
Value::Value(Value&& other) noexcept = default;
Value& Value::operator=(const Value& other) = default;
Value& Value::operator=(Value&& other) noexcept = default;
Value::~Value() = default;

Value Value::list(List items) {
  Value value;
  value.data_ = Seq{std::move(items), false};
  return value;
}

Value Value::tuple(List items) {
  Value value;
  value.data_ = Seq{std::move(items), true};
  return value;
}

Value Value::dict(Items items, bool ordered) {
  Value value;
  value.data_ = Map{std::move(items), ordered};
  return value;
}

Value::Kind Value::kind() const {
  switch (data_.index()) {
    case 0:
      return Kind::None;
    case 1:
      return Kind::Bool;
    case 2:
      return Kind::Int;
    case 3:
      return Kind::Double;
    case 4:
      return Kind::String;
    case 5:
      return Kind::Tensor;
    case 6:
      return std::get<Seq>(data_).tuple ? Kind::Tuple : Kind::List;
    default:
      return Kind::Dict;
  }
}

const char* Value::type_name() const {
  switch (kind()) {
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Double:
      return "float";
    case Kind::String:
      return "str";
    case Kind::Tensor:
      return "Tensor";
    case Kind::List:
      return "list";
    case Kind::Tuple:
      return "tuple";
    case Kind::Dict:
      return is_ordered_dict() ? "OrderedDict" : "dict";
  }
  return "?";
}

bool Value::is_ordered_dict() const {
  const auto* map = std::get_if<Map>(&data_);
  return map != nullptr && map->ordered;
}

namespace {
[[noreturn]] void wrong_type(const char* wanted, const Value& value) {
  throw std::invalid_argument(fmt::format("Expected a {} but the value is a {}: {}", wanted,
                                          value.type_name(), value.repr()));
}
}  // namespace

bool Value::to_bool() const {
  if (const auto* b = std::get_if<bool>(&data_)) return *b;
  wrong_type("bool", *this);
}

int64_t Value::to_int() const {
  if (const auto* i = std::get_if<int64_t>(&data_)) return *i;
  if (const auto* b = std::get_if<bool>(&data_)) return *b ? 1 : 0;
  wrong_type("int", *this);
}

double Value::to_double() const {
  if (const auto* d = std::get_if<double>(&data_)) return *d;
  if (const auto* i = std::get_if<int64_t>(&data_)) return static_cast<double>(*i);
  if (const auto* b = std::get_if<bool>(&data_)) return *b ? 1.0 : 0.0;
  wrong_type("float", *this);
}

const std::string& Value::to_string() const {
  if (const auto* s = std::get_if<std::string>(&data_)) return *s;
  wrong_type("str", *this);
}

const at::Tensor& Value::to_tensor() const {
  if (const auto* t = std::get_if<at::Tensor>(&data_)) return *t;
  wrong_type("Tensor", *this);
}

const Value::List& Value::elements() const {
  if (const auto* s = std::get_if<Seq>(&data_)) return s->items;
  wrong_type("list or tuple", *this);
}

Value::List& Value::elements() {
  if (auto* s = std::get_if<Seq>(&data_)) return s->items;
  wrong_type("list or tuple", *this);
}

const Value::Items& Value::items() const {
  if (const auto* m = std::get_if<Map>(&data_)) return m->items;
  wrong_type("dict", *this);
}

Value::Items& Value::items() {
  if (auto* m = std::get_if<Map>(&data_)) return m->items;
  wrong_type("dict", *this);
}

const Value* Value::find(const Value& key) const {
  const auto* map = std::get_if<Map>(&data_);
  if (map == nullptr) return nullptr;
  for (const auto& [k, v] : map->items)
    if (k.scalar_equals(key)) return &v;
  return nullptr;
}

Value* Value::find(const Value& key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->find(key));
}

const Value& Value::at(const Value& key) const {
  if (const Value* found = find(key)) return *found;
  throw std::out_of_range(fmt::format("Key {} is not in the dict", key.repr()));
}

void Value::set(Value key, Value value) {
  if (Value* found = find(key)) {
    *found = std::move(value);
    return;
  }
  items().emplace_back(std::move(key), std::move(value));
}

bool Value::erase(const Value& key) {
  auto* map = std::get_if<Map>(&data_);
  if (map == nullptr) return false;
  for (auto it = map->items.begin(); it != map->items.end(); ++it) {
    if (it->first.scalar_equals(key)) {
      map->items.erase(it);
      return true;
    }
  }
  return false;
}

bool Value::scalar_equals(const Value& other) const {
  if (data_.index() != other.data_.index()) return false;
  switch (data_.index()) {
    case 0:
      return true;
    case 1:
      return std::get<bool>(data_) == std::get<bool>(other.data_);
    case 2:
      return std::get<int64_t>(data_) == std::get<int64_t>(other.data_);
    case 3:
      return std::get<double>(data_) == std::get<double>(other.data_);
    case 4:
      return std::get<std::string>(data_) == std::get<std::string>(other.data_);
    default:
      return false;
  }
}

std::string Value::repr() const {
  switch (kind()) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return std::get<bool>(data_) ? "True" : "False";
    case Kind::Int:
      return std::to_string(std::get<int64_t>(data_));
    case Kind::Double:
      return fmt::format("{}", std::get<double>(data_));
    case Kind::String:
      return fmt::format("'{}'", std::get<std::string>(data_));
    case Kind::Tensor: {
      const auto& t = std::get<at::Tensor>(data_);
      if (!t.defined()) return "Tensor(undefined)";
      return fmt::format("Tensor[{}, {}]", fmt::join(t.sizes(), ", "),
                         c10::toString(t.scalar_type()));
    }
    case Kind::List:
    case Kind::Tuple:
      return fmt::format("{}[{} items]", type_name(), elements().size());
    case Kind::Dict:
      return fmt::format("{}[{} items]", type_name(), items().size());
  }
  return "?";
}

bool operator==(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::Tensor: {
      const at::Tensor& x = a.to_tensor();
      const at::Tensor& y = b.to_tensor();
      if (!x.defined() || !y.defined()) return x.defined() == y.defined();
      return x.scalar_type() == y.scalar_type() && x.sizes().equals(y.sizes()) &&
             x.device() == y.device() && at::equal(x, y);
    }
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return a.elements() == b.elements();
    case Value::Kind::Dict:
      return a.is_ordered_dict() == b.is_ordered_dict() && a.items() == b.items();
    default:
      return a.scalar_equals(b);
  }
}

}  // namespace cppfabric
