// datasets::CIFAR10: reading the binary batches, the errors, and the download path end to end
// against a loopback HTTP server serving a generated archive. SyntheticCIFAR10's shapes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <cppfabric/data/datasets/cifar10.hpp>
#include <fstream>
#include <map>
#include <thread>

#include "test_utils.hpp"

using cppfabric::data::datasets::CIFAR10;
using cppfabric::data::datasets::DownloadOptions;
using cppfabric::data::datasets::SyntheticCIFAR10;

namespace {

std::string make_temp_dir() {
  char pattern[] = "/tmp/cppfabric_cifar_XXXXXX";
  const char* dir = ::mkdtemp(pattern);
  if (dir == nullptr) throw std::runtime_error("mkdtemp failed");
  return dir;
}

void remove_tree(const std::string& dir) {
  int status = 0;
  cppfabric::testing::run_command("rm -rf '" + dir + "'", &status);
}

/// Writes `records` random records to `path`; returns (images N x 32 x 32 x 3, labels).
std::pair<torch::Tensor, torch::Tensor> write_batch(const std::string& path, int64_t records) {
  auto labels = torch::randint(0, 10, {records}, torch::kByte);
  auto planes = torch::randint(0, 256, {records, 3072}, torch::kByte);
  auto bytes = torch::cat({labels.view({records, 1}), planes}, 1).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel());
  return {planes.view({records, 3, 32, 32}).permute({0, 2, 3, 1}), labels.to(torch::kLong)};
}

/// A CIFAR-10 folder with small batch files (`records` per file) under `root`.
std::pair<torch::Tensor, torch::Tensor> write_dataset(const std::string& root, int64_t records) {
  const std::string folder = root + "/cifar-10-batches-bin";
  ::mkdir(folder.c_str(), 0755);
  std::vector<torch::Tensor> images, labels;
  for (int i = 1; i <= 5; ++i) {
    auto [x, y] = write_batch(folder + "/data_batch_" + std::to_string(i) + ".bin", records);
    images.push_back(x);
    labels.push_back(y);
  }
  write_batch(folder + "/test_batch.bin", records);
  return {torch::cat(images), torch::cat(labels)};
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Serves fixed files over HTTP/1.0 on 127.0.0.1 from a thread, until destroyed.
class LoopbackServer {
 public:
  explicit LoopbackServer(std::map<std::string, std::string> files) : files_(std::move(files)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 || ::listen(fd_, 8) != 0)
      throw std::runtime_error("LoopbackServer: cannot listen");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/mirror/"; }
  int requests() const { return requests_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int client = ::accept(fd_, nullptr, nullptr);
      if (client < 0) continue;
      ++requests_;
      std::string request;
      char buffer[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::recv(client, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        request.append(buffer, static_cast<std::size_t>(n));
      }
      const auto start = request.find(' ') + 1;
      const std::string path = request.substr(start, request.find(' ', start) - start);
      auto it = files_.find(path);
      std::string response;
      if (it == files_.end()) {
        response = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
      } else {
        response = "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                   std::to_string(it->second.size()) + "\r\n\r\n" + it->second;
      }
      for (std::size_t sent = 0; sent < response.size();) {
        const ssize_t n =
            ::send(client, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<std::size_t>(n);
      }
      ::close(client);
    }
  }

  std::map<std::string, std::string> files_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

std::string md5_of(const std::string& path) {
  int status = 0;
  const std::string out = cppfabric::testing::run_command("md5sum '" + path + "'", &status);
  return out.substr(0, 32);
}

class CIFAR10Test : public ::testing::Test {
 protected:
  void SetUp() override { root_ = make_temp_dir(); }
  void TearDown() override { remove_tree(root_); }
  std::string root_;
};

}  // namespace

TEST_F(CIFAR10Test, ReadsBinaryBatches) {
  auto [images, labels] = write_dataset(root_, 7);
  CIFAR10 train(root_, true);
  ASSERT_EQ(train.size(), 35u);
  EXPECT_TRUE(torch::equal(train.images(), images));
  EXPECT_TRUE(torch::equal(train.labels(), labels));
  auto example = train.get(12);
  EXPECT_EQ(example.data.sizes(), (std::vector<int64_t>{32, 32, 3}));
  EXPECT_EQ(example.data.scalar_type(), torch::kByte);
  EXPECT_EQ(example.target.item<int64_t>(), labels[12].item<int64_t>());

  namespace T = cppfabric::data::transforms;
  CIFAR10 test(root_, false, false, T::ToTensor());
  EXPECT_EQ(test.size(), 7u);
  EXPECT_EQ(test.get(0).data.sizes(), (std::vector<int64_t>{3, 32, 32}));
  EXPECT_THROW(test.get(7), std::out_of_range);
}

TEST_F(CIFAR10Test, MissingFilesWithoutDownload) {
  EXPECT_THROW_WITH(CIFAR10(root_, true), std::runtime_error, "data_batch_1.bin", "not found",
                    "download=true");
}

TEST_F(CIFAR10Test, TruncatedAndCorruptBatchFiles) {
  write_dataset(root_, 3);
  const std::string path = root_ + "/cifar-10-batches-bin/data_batch_3.bin";
  ASSERT_EQ(::truncate(path.c_str(), 3 * 3073 - 100), 0);
  EXPECT_THROW_WITH(CIFAR10(root_, true), std::runtime_error, "data_batch_3.bin", "truncated",
                    "download");
  write_dataset(root_, 3);
  {
    std::fstream f(root_ + "/cifar-10-batches-bin/test_batch.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3073);
    f.put(static_cast<char>(200));  // record 1's label
  }
  EXPECT_THROW_WITH(CIFAR10(root_, false), std::runtime_error, "test_batch.bin", "record 1",
                    "label 200");
}

TEST_F(CIFAR10Test, DownloadsFromLoopbackMirror) {
  if (!CIFAR10::download_supported()) GTEST_SKIP() << "built without libcurl/libarchive";
  const std::string source = make_temp_dir();
  auto [images, labels] = write_dataset(source, 4);
  int status = 0;
  const std::string archive = source + "/archive.tar.gz";
  cppfabric::testing::run_command(
      "tar -czf '" + archive + "' -C '" + source + "' cifar-10-batches-bin 2>&1", &status);
  ASSERT_EQ(status, 0);
  const std::string md5 = md5_of(archive);
  LoopbackServer server({{"/mirror/cifar-10-binary.tar.gz", read_file(archive)},
                         {"/mirror/garbage.tar.gz", std::string(5000, 'x')}});

  CIFAR10 train(root_, true, true, {}, DownloadOptions{.base_url = server.url(), .md5 = md5});
  EXPECT_EQ(train.size(), 20u);
  EXPECT_TRUE(torch::equal(train.images(), images));
  EXPECT_TRUE(torch::equal(train.labels(), labels));
  EXPECT_EQ(server.requests(), 1);
  // Present now: no second download.
  CIFAR10 test(root_, false, true, {}, DownloadOptions{.base_url = server.url(), .md5 = md5});
  EXPECT_EQ(test.size(), 4u);
  EXPECT_EQ(server.requests(), 1);

  // The environment variable picks the mirror too.
  const std::string other = make_temp_dir();
  {
    cppfabric::testing::ScopedEnv env("CPPFABRIC_CIFAR10_URL", server.url());
    EXPECT_EQ(CIFAR10::archive_url(), server.url() + "cifar-10-binary.tar.gz");
    CIFAR10 again(other, true, true, {}, DownloadOptions{.md5 = md5});
    EXPECT_EQ(again.size(), 20u);
  }
  remove_tree(other);

  // Wrong checksum.
  const std::string third = make_temp_dir();
  EXPECT_THROW_WITH(CIFAR10(third, true, true, {},
                            DownloadOptions{.base_url = server.url(), .md5 = std::string(32, '0')}),
                    std::runtime_error, "checksum mismatch", md5, "cifar-10-binary.tar.gz");
  // A corrupt archive whose checksum matches.
  const std::string garbage = source + "/garbage";
  std::ofstream(garbage) << std::string(5000, 'x');
  EXPECT_THROW_WITH(
      CIFAR10(third, true, true, {},
              DownloadOptions{
                  .base_url = server.url(), .filename = "garbage.tar.gz", .md5 = md5_of(garbage)}),
      std::runtime_error, "cannot extract", "garbage.tar.gz", "corrupt");
  // Not on the server.
  EXPECT_THROW_WITH(CIFAR10(third, true, true, {},
                            DownloadOptions{.base_url = server.url(), .filename = "absent.tar.gz"}),
                    std::runtime_error, "could not download", "absent.tar.gz", "404");
  remove_tree(third);
  remove_tree(source);
}

TEST_F(CIFAR10Test, UnreachableUrl) {
  if (!CIFAR10::download_supported()) GTEST_SKIP() << "built without libcurl/libarchive";
  // A port nobody listens on (bound and closed again).
  int port = 0;
  {
    LoopbackServer probe({});
    port = std::stoi(probe.url().substr(std::string("http://127.0.0.1:").size()));
  }
  EXPECT_THROW_WITH(
      CIFAR10(root_, true, true, {},
              DownloadOptions{.base_url = "http://127.0.0.1:" + std::to_string(port) + "/"}),
      std::runtime_error, "could not download", "CPPFABRIC_CIFAR10_URL");
}

TEST(SyntheticCIFAR10, ShapesDeterminismAndClasses) {
  SyntheticCIFAR10 a(300, true), b(300, true), test(100, false);
  EXPECT_EQ(a.images().sizes(), (std::vector<int64_t>{300, 32, 32, 3}));
  EXPECT_EQ(a.images().scalar_type(), torch::kByte);
  EXPECT_TRUE(torch::equal(a.images(), b.images()));
  EXPECT_TRUE(torch::equal(a.labels(), b.labels()));
  EXPECT_FALSE(torch::equal(a.images().narrow(0, 0, 100), test.images()));
  EXPECT_EQ(std::get<0>(at::_unique(a.labels())).numel(), 10);
  // Learnable: a nearest-class-mean classifier on raw pixels beats chance by far.
  auto x = a.images().to(torch::kFloat).view({300, -1});
  std::vector<torch::Tensor> means;
  for (int k = 0; k < 10; ++k) means.push_back(x.index({a.labels() == k}).mean(0));
  auto centers = torch::stack(means);
  auto tx = test.images().to(torch::kFloat).view({100, -1});
  auto predicted = torch::cdist(tx, centers).argmin(1);
  EXPECT_GT(predicted.eq(test.labels()).to(torch::kFloat).mean().item<double>(), 0.5);
}
