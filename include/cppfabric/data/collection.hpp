// Collections of tensors in samples and batches: tuples, vectors and string-keyed maps, nested as
// deep as you like, carried as a cppfabric::Value tree (Python's default_collate and
// move_data_to_device work on any such collection; these are their C++ counterparts).
//
//   // A dataset whose samples are a map of tensors:
//   Example get(std::size_t i) const override {
//     return Example::of(std::map<std::string, at::Tensor>{{"ids", ids[i]}, {"mask", mask[i]}});
//   }
//   for (auto& batch : loader) {
//     auto ids = batch.field("ids");                       // stacked: [batch, ...]
//     auto all = batch.as<std::map<std::string, at::Tensor>>();
//   }
//   // A dataset of (image, label, weight) tuples:
//   auto [x, y, w] = batch.as<std::tuple<at::Tensor, at::Tensor, at::Tensor>>();
//
// Collection<T> converts a C++ value to a Value tree (to) and back (from). It knows at::Tensor,
// numbers, bool, std::string, Value, std::vector, std::tuple, std::pair, and std::map /
// std::unordered_map with std::string keys; specialise it for your own types.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cppfabric/value.hpp"

namespace cppfabric::data {

/// Converts T to a Value tree (`to`) and a Value tree back to T (`from`; `where` starts the error
/// message, e.g. "Batch::as"). Throws std::invalid_argument naming what was expected and found.
template <typename T, typename = void>
struct Collection {
  static_assert(sizeof(T) == 0,
                "cppfabric::data::Collection<T>: T is not a collection cppfabric knows. Use "
                "at::Tensor, a number, std::string, cppfabric::Value, or std::vector / std::tuple "
                "/ std::pair / std::map<std::string, ...> of those, or specialise "
                "cppfabric::data::Collection<T> for your type.");
};

}  // namespace cppfabric::data

namespace cppfabric::detail {
[[noreturn]] void throw_collection_mismatch(const std::string& where, const std::string& wanted,
                                            const Value& found);
}  // namespace cppfabric::detail

namespace cppfabric::data {

template <>
struct Collection<Value> {
  static Value to(const Value& value) { return value; }
  static Value from(const Value& value, const std::string&) { return value; }
};

template <>
struct Collection<at::Tensor> {
  static Value to(const at::Tensor& tensor) { return Value(tensor); }
  static at::Tensor from(const Value& value, const std::string& where) {
    if (value.kind() != Value::Kind::Tensor)
      cppfabric::detail::throw_collection_mismatch(where, "a tensor", value);
    return value.to_tensor();
  }
};

template <>
struct Collection<std::string> {
  static Value to(const std::string& text) { return Value(text); }
  static std::string from(const Value& value, const std::string& where) {
    if (value.kind() != Value::Kind::String)
      cppfabric::detail::throw_collection_mismatch(where, "a string", value);
    return value.to_string();
  }
};

template <typename T>
struct Collection<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static Value to(T number) { return Value(number); }
  static T from(const Value& value, const std::string& where) {
    switch (value.kind()) {
      case Value::Kind::Bool:
        return static_cast<T>(value.to_bool());
      case Value::Kind::Int:
        return static_cast<T>(value.to_int());
      case Value::Kind::Double:
        return static_cast<T>(value.to_double());
      case Value::Kind::Tensor:
        if (value.to_tensor().numel() == 1) {
          const auto scalar = value.to_tensor().item();
          if constexpr (std::is_same_v<T, bool>) return scalar.template to<bool>();
          if constexpr (std::is_floating_point_v<T>) {
            return static_cast<T>(scalar.template to<double>());
          } else {
            return static_cast<T>(scalar.template to<int64_t>());
          }
        }
        [[fallthrough]];
      default:
        cppfabric::detail::throw_collection_mismatch(where, "a number", value);
    }
  }
};

template <typename T>
struct Collection<std::vector<T>> {
  static Value to(const std::vector<T>& items) {
    Value::List list;
    list.reserve(items.size());
    for (const auto& item : items) list.push_back(Collection<T>::to(item));
    return Value::list(std::move(list));
  }
  static std::vector<T> from(const Value& value, const std::string& where) {
    if (!value.is_sequence())
      cppfabric::detail::throw_collection_mismatch(where, "a list or tuple", value);
    std::vector<T> out;
    out.reserve(value.elements().size());
    std::size_t i = 0;
    for (const auto& item : value.elements())
      out.push_back(Collection<T>::from(item, where + "[" + std::to_string(i++) + "]"));
    return out;
  }
};

template <typename... T>
struct Collection<std::tuple<T...>> {
  static Value to(const std::tuple<T...>& items) {
    return std::apply(
        [](const auto&... item) {
          return Value::tuple({Collection<std::decay_t<decltype(item)>>::to(item)...});
        },
        items);
  }
  static std::tuple<T...> from(const Value& value, const std::string& where) {
    constexpr std::size_t n = sizeof...(T);
    if (!value.is_sequence() || value.elements().size() != n)
      cppfabric::detail::throw_collection_mismatch(
          where, "a tuple of " + std::to_string(n) + " items", value);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return std::tuple<T...>(
          Collection<T>::from(value.elements()[I], where + "[" + std::to_string(I) + "]")...);
    }
    (std::index_sequence_for<T...>{});
  }
};

template <typename A, typename B>
struct Collection<std::pair<A, B>> {
  static Value to(const std::pair<A, B>& item) {
    return Value::tuple({Collection<A>::to(item.first), Collection<B>::to(item.second)});
  }
  static std::pair<A, B> from(const Value& value, const std::string& where) {
    auto [a, b] = Collection<std::tuple<A, B>>::from(value, where);
    return {std::move(a), std::move(b)};
  }
};

template <typename T>
struct Collection<std::map<std::string, T>> {
  static Value to(const std::map<std::string, T>& items) {
    Value::Items out;
    out.reserve(items.size());
    for (const auto& [key, item] : items) out.emplace_back(Value(key), Collection<T>::to(item));
    return Value::dict(std::move(out));
  }
  static std::map<std::string, T> from(const Value& value, const std::string& where) {
    if (!value.is_dict())
      cppfabric::detail::throw_collection_mismatch(where, "a string-keyed map", value);
    std::map<std::string, T> out;
    for (const auto& [key, item] : value.items()) {
      if (key.kind() != Value::Kind::String)
        cppfabric::detail::throw_collection_mismatch(where + " key", "a string", key);
      out.emplace(key.to_string(),
                  Collection<T>::from(item, where + "[\"" + key.to_string() + "\"]"));
    }
    return out;
  }
};

/// Unordered maps become dicts with sorted keys, so every rank and every sample agree.
template <typename T>
struct Collection<std::unordered_map<std::string, T>> {
  static Value to(const std::unordered_map<std::string, T>& items) {
    return Collection<std::map<std::string, T>>::to(
        std::map<std::string, T>(items.begin(), items.end()));
  }
  static std::unordered_map<std::string, T> from(const Value& value, const std::string& where) {
    auto sorted = Collection<std::map<std::string, T>>::from(value, where);
    return {sorted.begin(), sorted.end()};
  }
};

/// `value` with every tensor in it moved to `device` (Python's move_data_to_device).
Value move_to_device(const Value& value, c10::Device device, bool non_blocking = false);

/// `value` with every tensor in it in pinned memory.
Value pin_memory(const Value& value);

/// Python's default_collate over samples that are Value trees: tensors are stacked along a new
/// first dimension; ints, floats and bools become int64, float64 and bool tensors; strings become
/// a list of strings; lists, tuples and dicts are collated position by position / key by key
/// (every sample must have the same structure). `what` names the samples in error messages.
/// Throws std::invalid_argument naming the first element that differs.
Value collate_values(const std::vector<Value>& samples, bool pin_memory = false,
                     const std::string& what = "fields");

}  // namespace cppfabric::data
