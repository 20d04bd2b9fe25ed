// The stack machine under cppfabric's two pickle readers (unpickler.cpp: torch.save's data.pkl;
// dcp_metadata.cpp: a distributed checkpoint's .metadata), both fed untrusted files: reading the
// opcode stream, the stack with its MARKs, the memo, and the opcodes both treat alike
// (common_opcode). Every read is bounds-checked and every growth limited; each failure goes to
// Derived::fail_at(why), which names the file and the byte position and must not return. Private.
//
//   class Reader : PickleMachine<Reader, Obj> {  // Obj: { T t; bool b; int64_t i; double d;
//     friend class PickleMachine<Reader, Obj>;   //   std::string s; std::vector<ObjPtr> items; }
//     [[noreturn]] void fail_at(const std::string&) const;     // T: None, Bool, Int, Float, Str,
//     void check_global(const std::string& name);              //    List, Tuple, Dict, Global
//     void setitems(const ObjPtr& dict, std::vector<ObjPtr>& key_values);
//     ObjPtr reduce(const ObjPtr& callable, const ObjPtr& args);
//     ...  // its own opcodes: STOP, and those common_opcode declines
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

  // --- the opcodes both readers share

  /// Runs `code` when it is one both readers treat alike: framing, MARK, empty containers, None,
  /// booleans, integers, floats, strings and bytes (kept as strings), the memo, tuples, lists,
  /// dicts (Derived::setitems), globals (Derived::check_global), REDUCE (Derived::reduce), POP,
  /// DUP and POP_MARK. False for any other opcode, left to the reader.
  bool common_opcode(unsigned char code) {
    auto& self = *static_cast<Derived*>(this);
    switch (code) {
      case 0x80:  // PROTO
        need(1);
        return true;
      case 0x95:  // FRAME
        need(8);
        return true;
      case '(':
        mark();
        return true;
      case '}':
        push(make(Obj::T::Dict));
        return true;
      case ']':
        push(make(Obj::T::List));
        return true;
      case ')':
        push(make(Obj::T::Tuple));
        return true;
      case 'N':
        push(make(Obj::T::None));
        return true;
      case 0x88:  // NEWTRUE
      case 0x89: {
        auto o = make(Obj::T::Bool);
        o->b = code == 0x88;
        push(std::move(o));
        return true;
      }
      case 'K':
        push_int(static_cast<int64_t>(le(1)));
        return true;
      case 'M':
        push_int(static_cast<int64_t>(le(2)));
        return true;
      case 'J':
        push_int(static_cast<int32_t>(static_cast<uint32_t>(le(4))));
        return true;
      case 0x8a:  // LONG1
        push_int(long_bytes(le(1)));
        return true;
      case 0x8b:  // LONG4
        push_int(long_bytes(le(4)));
        return true;
      case 'G':
        push_float(binfloat());
        return true;
      case 'X':  // BINUNICODE
      case 'T':  // BINSTRING
      case 'B':  // BINBYTES
        push_str(le(4));
        return true;
      case 0x8c:  // SHORT_BINUNICODE
      case 'U':   // SHORT_BINSTRING
      case 'C':   // SHORT_BINBYTES
        push_str(le(1));
        return true;
      case 0x8d:  // BINUNICODE8
        push_str(le(8));
        return true;
      case 'q':
        memo_put(le(1));
        return true;
      case 'r':
        memo_put(le(4));
        return true;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        return true;
      case 'h':
        memo_get(le(1));
        return true;
      case 'j':
        memo_get(le(4));
        return true;
      case 'c': {  // GLOBAL
        std::string module = line();
        std::string name = line();
        push_global(self, module + "." + name);
        return true;
      }
      case 0x93: {  // STACK_GLOBAL
        ObjPtr name = pop();
        ObjPtr module = pop();
        if (name->t != Obj::T::Str || module->t != Obj::T::Str)
          fail_here("a malformed STACK_GLOBAL");
        push_global(self, module->s + "." + name->s);
        return true;
      }
      case 'R': {  // REDUCE
        ObjPtr args = pop();
        ObjPtr callable = pop();
        push(self.reduce(callable, args));
        return true;
      }
      case 't': {
        auto o = make(Obj::T::Tuple);
        o->items = pop_mark();
        push(std::move(o));
        return true;
      }
      case 0x85:  // TUPLE1, TUPLE2, TUPLE3
      case 0x86:
      case 0x87: {
        const int n = code - 0x84;
        auto o = make(Obj::T::Tuple);
        o->items.resize(n);
        for (int k = n - 1; k >= 0; --k) o->items[k] = pop();
        push(std::move(o));
        return true;
      }
      case 'a': {
        ObjPtr item = pop();
        ObjPtr& list = top();
        if (list->t != Obj::T::List) fail_here("APPEND on something that is not a list");
        list->items.push_back(std::move(item));
        return true;
      }
      case 'e': {
        auto items = pop_mark();
        ObjPtr& list = top();
        if (list->t != Obj::T::List) fail_here("APPENDS on something that is not a list");
        for (auto& item : items) list->items.push_back(std::move(item));
        return true;
      }
      case 's': {
        std::vector<ObjPtr> kv(2);
        kv[1] = pop();
        kv[0] = pop();
        self.setitems(top(), kv);
        return true;
      }
      case 'u': {
        auto kv = pop_mark();
        self.setitems(top(), kv);
        return true;
      }
      case '0':  // POP
        pop();
        return true;
      case '2':  // DUP
        push(top());
        return true;
      case '1':  // POP_MARK
        pop_mark();
        return true;
      default:
        return false;
    }
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

  void push_global(Derived& self, std::string name) {
    self.check_global(name);
    auto o = make(Obj::T::Global);
    o->s = std::move(name);
    push(std::move(o));
  }

  std::string_view data_;
  uint64_t pos_ = 0;
  std::vector<ObjPtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, ObjPtr> memo_;
};

}  // namespace cppfabric::checkpoint::detail
