// Guard: the RAII form of a Python context manager.
//
//   {
//     auto guard = fabric.init_module();   // default dtype changed here
//     Net net;
//   }                                      // restored here, also when an exception unwinds
//
// A Guard holds cleanup actions and runs them in reverse order when it is destroyed. It is
// movable, not copyable; `release()` runs the cleanups early.
#pragma once

#include <functional>
#include <utility>
#include <vector>

namespace cppfabric {

class Guard {
 public:
  Guard() = default;
  explicit Guard(std::function<void()> on_exit) { push(std::move(on_exit)); }
  Guard(Guard&& other) noexcept : actions_(std::exchange(other.actions_, {})) {}
  Guard& operator=(Guard&& other) noexcept {
    if (this != &other) {
      release();
      actions_ = std::exchange(other.actions_, {});
    }
    return *this;
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  ~Guard() { release(); }

  /// Adds a cleanup action; it runs before those added earlier.
  void push(std::function<void()> on_exit) {
    if (on_exit) actions_.push_back(std::move(on_exit));
  }
  /// Takes over another guard's actions; they run before this guard's own.
  void adopt(Guard&& other) {
    for (auto& action : other.actions_) actions_.push_back(std::move(action));
    other.actions_.clear();
  }
  /// Runs the cleanups now.
  void release() noexcept {
    while (!actions_.empty()) {
      auto action = std::move(actions_.back());
      actions_.pop_back();
      try {
        action();
      } catch (...) {
      }
    }
  }
  bool active() const { return !actions_.empty(); }

 private:
  std::vector<std::function<void()>> actions_;
};

}  // namespace cppfabric
