// The stack machine under cppfabric's two pickle readers (unpickler.cpp: torch.save's data.pkl;
// dcp_metadata.cpp: a distributed checkpoint's .metadata), both fed untrusted files: reading the
// opcode stream, the stack with its MARKs, the memo and the scalar opcodes' operands. Every read
// is bounds-checked and every growth limited; each failure goes to Derived::fail_at(why), which
// names the file and the byte position and must not return. Private.
//
//   class Reader : PickleMachine<Reader, Obj> {       // Obj: { T t; int64_t i; double d;
//     [[noreturn]] void fail_at(const std::string&) const;  //      std::string s; ... }, with
//     ...                                                    //      T::Int, T::Float, T::Str
//   };
#pragma once

#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint::detail {

template <typename Derived, typename Obj>
class PickleMachine {
 public:
  using ObjPtr = std::shared_ptr<Obj>;

 protected:
  explicit PickleMachine(std::string_view data) : data_(data) {}

  /// The stack and the MARK list may hold this many entries.
  static constexpr std::size_t kMaxStack = 1'000'000;

  [[noreturn]] void fail_here(const std::string& why) const {
    static_cast<const Derived*>(this)->fail_at(why);
  }

  // --- reading the opcode stream
  const unsigned char* need(uint64_t n) {
    if (n > data_.size() - pos_) fail_here("unexpected end of the pickle (truncated file?)");
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    pos_ += n;
    return p;
  }
  /// An n-byte little-endian unsigned operand.
  uint64_t le(uint64_t n) {
    const auto* p = need(n);
    uint64_t v = 0;
    for (uint64_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
    return v;
  }
  /// A newline-terminated operand (GLOBAL's module and name), at most 256 bytes.
  std::string line() {
    const auto end = data_.find('\n', pos_);
    if (end == std::string_view::npos || end - pos_ > 256) fail_here("a malformed GLOBAL");
    std::string out(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  /// LONG1/LONG4's operand: `n` bytes of two's complement, at most 64 bits.
  int64_t long_bytes(uint64_t n) {
    if (n > 8) fail_here("an integer wider than 64 bits");
    const auto* p = need(n);
    uint64_t u = 0;
    for (uint64_t k = 0; k < n; ++k) u |= uint64_t(p[k]) << (8 * k);
    if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
    return static_cast<int64_t>(u);
  }
  /// BINFLOAT's operand: 8 bytes of a big-endian IEEE double.
  double binfloat() {
    const auto* p = need(8);
    uint64_t bits = 0;
    for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
    double d = 0;
    std::memcpy(&d, &bits, 8);
    return d;
  }

  // --- objects and the stack
  static ObjPtr make(typename Obj::T t) {
    auto o = std::make_shared<Obj>();
    o->t = t;
    return o;
  }
  ObjPtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail_here("stack underflow");
    ObjPtr o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  ObjPtr& top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail_here("stack underflow");
    return stack_.back();
  }
  void mark() {
    if (marks_.size() > kMaxStack) fail_here("too many MARKs");
    marks_.push_back(stack_.size());
  }
  std::vector<ObjPtr> pop_mark() {
    if (marks_.empty()) fail_here("no MARK");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ObjPtr> out(
        std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
        std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return out;
  }
  void push(ObjPtr o) {
    if (stack_.size() > kMaxStack || marks_.size() > kMaxStack)
      fail_here("the pickle stack grows too deep");
    stack_.push_back(std::move(o));
  }
  void push_int(int64_t v) {
    auto o = make(Obj::T::Int);
    o->i = v;
    push(std::move(o));
  }
  void push_float(double v) {
    auto o = make(Obj::T::Float);
    o->d = v;
    push(std::move(o));
  }
  /// A string operand of `n` bytes (the length read from the stream).
  void push_str(uint64_t n) {
    const auto* p = need(n);
    auto o = make(Obj::T::Str);
    o->s.assign(reinterpret_cast<const char*>(p), n);
    push(std::move(o));
  }

  // --- the memo
  void memo_put(uint64_t index) {
    if (stack_.empty()) fail_here("memoize on an empty stack");
    memo_[index] = stack_.back();
  }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail_here(fmt::format("memo entry {} does not exist", index));
    push(it->second);
  }

  std::string_view data_;
  uint64_t pos_ = 0;
  std::vector<ObjPtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, ObjPtr> memo_;
};

}  // namespace cppfabric::checkpoint::detail
