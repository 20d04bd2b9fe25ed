#include "cppfabric/utilities/terminate.hpp"

#include <cxxabi.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <typeinfo>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::utilities {
namespace {

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                             std::free);
  std::string text = status == 0 && out ? std::string(out.get()) : std::string(name);
  // std::throw_with_nested(E) throws libstdc++'s std::_Nested_exception<E>: name E.
  const std::string wrapper = "std::_Nested_exception<";
  if (text.rfind(wrapper, 0) == 0 && text.back() == '>') {
    text = text.substr(wrapper.size(), text.size() - wrapper.size() - 1);
  }
  return text;
}

/// "<type>: <what>" for the exception in `error`, then one "caused by" line per nested exception.
void describe(std::exception_ptr error, std::string& out, int depth) {
  if (depth > 16) return;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    out += fmt::format("{}{}: {}\n", depth == 0 ? "" : "caused by ", demangle(typeid(e).name()),
                       e.what());
    if (const auto* nested = dynamic_cast<const std::nested_exception*>(&e)) {
      if (nested->nested_ptr()) describe(nested->nested_ptr(), out, depth + 1);
    }
  } catch (...) {
    const std::type_info* type = abi::__cxa_current_exception_type();
    out += fmt::format("{}{} (not a std::exception)\n", depth == 0 ? "" : "caused by ",
                       type != nullptr ? demangle(type->name()) : "an unknown type");
  }
}

void write_all(int fd, const std::string& text) {
  const char* data = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    left -= static_cast<std::size_t>(n);
  }
}

[[noreturn]] void on_terminate() {
  // Whatever the program printed so far goes first.
  std::fflush(stdout);
  try {
    console()->flush();
  } catch (...) {
  }
  const std::exception_ptr error = std::current_exception();
  write_all(STDERR_FILENO, uncaught_exception_message(error, current_rank(), current_world_size()));
  if (!error) std::abort();  // std::terminate() called directly: keep the core dump
  std::fflush(stderr);
  std::_Exit(EXIT_FAILURE);
}

}  // namespace

std::string uncaught_exception_message(std::exception_ptr error, int rank, int world_size) {
  std::string body;
  if (error) {
    body = "Uncaught exception: ";
    describe(error, body, 0);
  } else {
    body = "terminate called without an active exception\n";
  }
  if (world_size <= 1) return body;
  const std::string prefix = fmt::format("[rank: {}] ", rank);
  std::string out;
  std::size_t start = 0;
  while (start < body.size()) {
    std::size_t end = body.find('\n', start);
    if (end == std::string::npos) end = body.size() - 1;
    out += prefix;
    out.append(body, start, end - start + 1);
    start = end + 1;
  }
  return out;
}

void install_terminate_handler() {
  static std::atomic<bool> installed{false};
  if (!installed.exchange(true)) std::set_terminate(on_terminate);
}

}  // namespace cppfabric::utilities
