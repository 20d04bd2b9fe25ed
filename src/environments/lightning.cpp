#include "cppfabric/environments/lightning.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::environments {

using detail::env_int;
using detail::env_string;

int find_free_network_port() {
  if (env_string("STANDALONE_PORT")) return env_int("STANDALONE_PORT");
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("find_free_network_port: cannot create a socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("find_free_network_port: cannot bind a port on this machine");
  return ntohs(address.sin_port);
}

bool LightningEnvironment::creates_processes_externally() const {
  return env_string("LOCAL_RANK").has_value();
}

std::string LightningEnvironment::main_address() const {
  return env_string("MASTER_ADDR").value_or("127.0.0.1");
}

int LightningEnvironment::main_port() const {
  if (main_port_ == -1) {
    main_port_ = env_string("MASTER_PORT") ? env_int("MASTER_PORT") : find_free_network_port();
  }
  return main_port_;
}

int LightningEnvironment::local_rank() const { return env_int("LOCAL_RANK", 0); }

int LightningEnvironment::node_rank() const {
  return env_int("NODE_RANK", env_int("GROUP_RANK", 0));
}

void LightningEnvironment::teardown() { ::unsetenv("WORLD_SIZE"); }

}  // namespace cppfabric::environments
