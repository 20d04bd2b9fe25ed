#pragma once
// Runs a command (a benchmark's own child run) and returns the number printed after `marker` in its
// output; throws with the whole output when it fails or prints no such number.
#include <stdio.h>

#include <stdexcept>
#include <string>

namespace cppfabric::bench {

inline double run_and_read_number(const std::string& command, const std::string& marker,
                                  const std::string& what) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = ::pclose(pipe);
  const auto at = output.find(marker);
  if (status != 0 || at == std::string::npos) {
    throw std::runtime_error(what + " failed:\n" + output);
  }
  return std::stod(output.substr(at + marker.size()));
}

}  // namespace cppfabric::bench
