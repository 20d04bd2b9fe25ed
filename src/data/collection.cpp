#include "cppfabric/data/collection.hpp"

#include <torch/torch.h>

#include <stdexcept>

#include "cppfabric/data/dataset.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "data/error_message.hpp"
#include "data/map_tensors.hpp"

namespace cppfabric::detail {

void throw_collection_mismatch(const std::string& where, const std::string& wanted,
                               const Value& found) {
  std::string shape;
  if (found.is_sequence()) shape = fmt::format(" of {} items", found.elements().size());
  if (found.is_dict()) shape = fmt::format(" of {} entries", found.items().size());
  throw std::invalid_argument(fmt::format("{}: expected {}, but found a {}{} ({})", where, wanted,
                                          found.type_name(), shape, found.repr()));
}

std::string error_message(const std::exception& error) {
  // LibTorch's errors carry a C++ backtrace in what(); our messages never do.
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error))
    return c10_error->what_without_backtrace();
  return error.what();
}

}  // namespace cppfabric::detail

namespace cppfabric::data {

namespace {

std::string shape_of(const at::Tensor& t) { return fmt::format("{}", t.sizes().vec()); }

Value collate_at(const std::vector<const Value*>& samples, bool pin, const std::string& where) {
  const Value& first = *samples.front();
  for (std::size_t i = 1; i < samples.size(); ++i) {
    const Value& other = *samples[i];
    const bool same_kind =
        other.kind() == first.kind() ||
        (first.is_sequence() && other.is_sequence()) ||  // a list and a tuple collate together
        (first.kind() == Value::Kind::Int && other.kind() == Value::Kind::Double) ||
        (first.kind() == Value::Kind::Double && other.kind() == Value::Kind::Int);
    if (!same_kind) {
      throw std::invalid_argument(fmt::format(
          "default_collate: {} is a {} in element 0 of the batch but a {} in element {}; every "
          "sample must have the same structure",
          where, first.type_name(), other.type_name(), i));
    }
  }
  switch (first.kind()) {
    case Value::Kind::Tensor: {
      std::vector<at::Tensor> parts;
      parts.reserve(samples.size());
      for (std::size_t i = 0; i < samples.size(); ++i) {
        const auto& t = samples[i]->to_tensor();
        if (!t.defined()) {
          throw std::invalid_argument(fmt::format(
              "default_collate: {} is an undefined tensor in element {} of the batch", where, i));
        }
        if (!parts.empty() && t.sizes() != parts.front().sizes()) {
          throw std::invalid_argument(fmt::format(
              "default_collate: {} has shape {} in element 0 of the batch but {} in element {}; "
              "stacking needs equal shapes (resize the samples, or pass a collate_fn)",
              where, shape_of(parts.front()), shape_of(t), i));
        }
        parts.push_back(t);
      }
      auto out = at::stack(parts);
      return Value(pin ? out.pin_memory() : out);
    }
    case Value::Kind::Bool:
    case Value::Kind::Int:
    case Value::Kind::Double: {
      bool any_double = false;
      for (const auto* s : samples) any_double |= s->kind() == Value::Kind::Double;
      at::Tensor out;
      if (first.kind() == Value::Kind::Bool) {
        std::vector<uint8_t> values;
        for (const auto* s : samples) values.push_back(s->to_bool() ? 1 : 0);
        out = torch::tensor(values, torch::kUInt8).to(torch::kBool);
      } else if (any_double) {
        std::vector<double> values;
        for (const auto* s : samples) values.push_back(s->to_double());
        out = torch::tensor(values, torch::kFloat64);
      } else {
        std::vector<int64_t> values;
        for (const auto* s : samples) values.push_back(s->to_int());
        out = torch::tensor(values, torch::kInt64);
      }
      return Value(pin ? out.pin_memory() : out);
    }
    case Value::Kind::String: {
      Value::List strings;
      for (const auto* s : samples) strings.push_back(*s);
      return Value::list(std::move(strings));
    }
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const std::size_t n = first.elements().size();
      for (std::size_t i = 1; i < samples.size(); ++i) {
        if (samples[i]->elements().size() != n) {
          throw std::invalid_argument(fmt::format(
              "default_collate: {} has {} items in element 0 of the batch but {} in element {}; "
              "each element in the batch should be of equal size",
              where, n, samples[i]->elements().size(), i));
        }
      }
      Value::List out;
      out.reserve(n);
      for (std::size_t k = 0; k < n; ++k) {
        std::vector<const Value*> column;
        column.reserve(samples.size());
        for (const auto* s : samples) column.push_back(&s->elements()[k]);
        out.push_back(collate_at(column, pin, fmt::format("{}[{}]", where, k)));
      }
      return first.kind() == Value::Kind::List ? Value::list(std::move(out))
                                               : Value::tuple(std::move(out));
    }
    case Value::Kind::Dict: {
      Value::Items out;
      out.reserve(first.items().size());
      for (const auto& [key, unused] : first.items()) {
        std::vector<const Value*> column;
        column.reserve(samples.size());
        for (std::size_t i = 0; i < samples.size(); ++i) {
          const Value* item = samples[i]->find(key);
          if (item == nullptr) {
            throw std::invalid_argument(fmt::format(
                "default_collate: {} has the key {} in element 0 of the batch but not in element "
                "{}; every sample must have the same keys",
                where, key.repr(), i));
          }
          column.push_back(item);
        }
        out.emplace_back(key, collate_at(column, pin, fmt::format("{}[{}]", where, key.repr())));
      }
      for (std::size_t i = 1; i < samples.size(); ++i) {
        if (samples[i]->items().size() != first.items().size()) {
          throw std::invalid_argument(fmt::format(
              "default_collate: {} has {} keys in element {} of the batch but {} in element 0; "
              "every sample must have the same keys",
              where, samples[i]->items().size(), i, first.items().size()));
        }
      }
      return Value::dict(std::move(out), first.is_ordered_dict());
    }
    case Value::Kind::None:
      throw std::invalid_argument(fmt::format(
          "default_collate: {} is None; a batch must contain tensors, numbers, strings, or "
          "lists, tuples and maps of those",
          where));
  }
  throw std::logic_error("collate_at: unknown Value kind");
}

}  // namespace

Value move_to_device(const Value& value, c10::Device device, bool non_blocking) {
  return detail::map_tensors(value, [&](const at::Tensor& t) {
    return t.defined() && t.device() != device ? t.to(device, non_blocking) : t;
  });
}

Value pin_memory(const Value& value) {
  return detail::map_tensors(value, [](const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && !t.is_pinned() ? t.pin_memory() : t;
  });
}

Value collate_values(const std::vector<Value>& samples, bool pin, const std::string& what) {
  if (samples.empty()) return {};
  std::vector<const Value*> pointers;
  pointers.reserve(samples.size());
  for (const auto& s : samples) pointers.push_back(&s);
  return collate_at(pointers, pin, what);
}

// ------------------------------------------------------------------ Batch accessors

const at::Tensor& Batch::field(const std::string& key) const {
  if (!fields.is_dict()) {
    throw std::invalid_argument(
        fmt::format("Batch::field(\"{}\"): the batch's fields are not a map (they are a {}: {})",
                    key, fields.type_name(), fields.repr()));
  }
  const Value* item = fields.find(Value(key));
  if (item == nullptr) {
    std::vector<std::string> keys;
    for (const auto& [k, unused] : fields.items()) keys.push_back(k.repr());
    throw std::out_of_range(fmt::format("Batch::field(\"{}\"): no such key; the batch has {}", key,
                                        fmt::join(keys, ", ")));
  }
  if (item->kind() != Value::Kind::Tensor)
    cppfabric::detail::throw_collection_mismatch(fmt::format("Batch::field(\"{}\")", key),
                                                 "a tensor", *item);
  return item->to_tensor();
}

const at::Tensor& Batch::field(std::size_t index) const {
  if (!fields.is_sequence()) {
    throw std::invalid_argument(
        fmt::format("Batch::field({}): the batch's fields are not a tuple or list (they are a {}: "
                    "{})",
                    index, fields.type_name(), fields.repr()));
  }
  if (index >= fields.elements().size()) {
    throw std::out_of_range(fmt::format("Batch::field({}): index out of range for {} fields", index,
                                        fields.elements().size()));
  }
  const Value& item = fields.elements()[index];
  if (item.kind() != Value::Kind::Tensor)
    cppfabric::detail::throw_collection_mismatch(fmt::format("Batch::field({})", index), "a tensor",
                                                 item);
  return item.to_tensor();
}

}  // namespace cppfabric::data
