#include "cppfabric/data/datasets/cifar10.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "cppfabric/detail/fmt.hpp"
#include "data/datasets/md5.hpp"
#include "utilities/filesystem.hpp"

#if CPPFABRIC_HAS_CURL
#include <curl/curl.h>
#endif
#if CPPFABRIC_HAS_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>
#endif

namespace cppfabric::data::datasets {

namespace {

constexpr const char* kOfficialBaseUrl = "https://www.cs.toronto.edu/~kriz/";
constexpr int64_t kSide = 32;
constexpr int64_t kImageBytes = 3 * kSide * kSide;

std::vector<std::string> batch_files(bool train) {
  if (!train) return {"test_batch.bin"};
  return {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
          "data_batch_5.bin"};
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

bool file_exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

void make_dirs(const std::string& path) {
  std::string failed;
  if (const int error = detail::make_directories(path, &failed))
    throw std::runtime_error(fmt::format("CIFAR10: cannot create folder {}: {}", failed,
                                         detail::make_directories_error_text(error)));
}

std::string resolve_base_url(const DownloadOptions& options) {
  std::string url = options.base_url;
  if (url.empty()) {
    const char* env = std::getenv("CPPFABRIC_CIFAR10_URL");
    url = env != nullptr && *env != '\0' ? env : kOfficialBaseUrl;
  }
  if (url.back() != '/') url.push_back('/');
  return url;
}

/// Reads one batch file into images (uint8 N x 32 x 32 x 3) and labels (int64 N).
std::pair<at::Tensor, at::Tensor> read_batch_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    throw std::runtime_error(
        fmt::format("CIFAR10: cannot open {}: {}", path, std::strerror(errno)));
  const auto bytes = static_cast<int64_t>(in.tellg());
  if (bytes <= 0 || bytes % CIFAR10::kRecordBytes != 0)
    throw std::runtime_error(fmt::format(
        "CIFAR10: {} is truncated or corrupt: {} bytes is not a whole number of {}-byte records "
        "(an official batch file has 10000 records, 30730000 bytes). Delete the "
        "cifar-10-batches-bin folder and download it again (download=true / --download).",
        path, bytes, CIFAR10::kRecordBytes));
  in.seekg(0);
  auto raw = at::empty({bytes}, at::kByte);
  if (!in.read(reinterpret_cast<char*>(raw.data_ptr<uint8_t>()), bytes))
    throw std::runtime_error(
        fmt::format("CIFAR10: error reading {} ({} bytes expected)", path, bytes));
  const int64_t n = bytes / CIFAR10::kRecordBytes;
  auto records = raw.view({n, CIFAR10::kRecordBytes});
  auto labels = records.select(1, 0).to(at::kLong);
  const int64_t bad = labels.gt(9).sum().item<int64_t>();
  if (bad > 0) {
    const int64_t first = labels.gt(9).nonzero()[0][0].item<int64_t>();
    throw std::runtime_error(fmt::format(
        "CIFAR10: {} is corrupt: record {} has label {} (labels are 0..9), {} bad records in all. "
        "Delete the cifar-10-batches-bin folder and download it again.",
        path, first, labels[first].item<int64_t>(), bad));
  }
  // CHW planes per record -> HWC, as torchvision stores CIFAR-10.
  auto images = records.narrow(1, 1, kImageBytes)
                    .view({n, 3, kSide, kSide})
                    .permute({0, 2, 3, 1})
                    .contiguous();
  return {images, labels};
}

#if CPPFABRIC_HAS_CURL
size_t write_to_file(char* data, size_t size, size_t count, void* user) {
  return std::fwrite(data, size, count, static_cast<FILE*>(user)) * size;
}

void fetch(const std::string& url, const std::string& destination, long timeout_s) {
  static const bool initialised = [] { return curl_global_init(CURL_GLOBAL_DEFAULT) == 0; }();
  (void)initialised;
  const std::string partial = destination + ".part";
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(partial.c_str(), "wb"), &std::fclose);
  if (!file)
    throw std::runtime_error(
        fmt::format("CIFAR10: cannot write {}: {}", partial, std::strerror(errno)));
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (!curl) throw std::runtime_error("CIFAR10: curl_easy_init failed");
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &write_to_file);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, file.get());
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT, timeout_s);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  const CURLcode code = curl_easy_perform(curl.get());
  file.reset();
  if (code != CURLE_OK) {
    ::unlink(partial.c_str());
    throw std::runtime_error(fmt::format(
        "CIFAR10: could not download {}: {}. Check the network connection, or point "
        "CPPFABRIC_CIFAR10_URL (or DownloadOptions::base_url) at a mirror holding {}, or put the "
        "extracted cifar-10-batches-bin folder in place yourself.",
        url, error[0] != '\0' ? error : curl_easy_strerror(code),
        url.substr(url.find_last_of('/') + 1)));
  }
  if (::rename(partial.c_str(), destination.c_str()) != 0)
    throw std::runtime_error(fmt::format("CIFAR10: cannot rename {} to {}: {}", partial,
                                         destination, std::strerror(errno)));
}
#endif

#if CPPFABRIC_HAS_LIBARCHIVE
void extract(const std::string& archive_path, const std::string& root) {
  std::unique_ptr<archive, int (*)(archive*)> reader(archive_read_new(), &archive_read_free);
  std::unique_ptr<archive, int (*)(archive*)> writer(archive_write_disk_new(), &archive_write_free);
  archive_read_support_filter_all(reader.get());
  archive_read_support_format_all(reader.get());
  archive_write_disk_set_options(writer.get(), ARCHIVE_EXTRACT_TIME |
                                                   ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                   ARCHIVE_EXTRACT_SECURE_SYMLINKS);
  auto fail = [&](archive* a, const char* what) {
    throw std::runtime_error(fmt::format(
        "CIFAR10: cannot extract {} ({}: {}). The archive is corrupt or not a tar.gz; delete it "
        "and download again.",
        archive_path, what, archive_error_string(a) ? archive_error_string(a) : "unknown error"));
  };
  if (archive_read_open_filename(reader.get(), archive_path.c_str(), 1 << 16) != ARCHIVE_OK)
    fail(reader.get(), "open");
  int entries = 0;
  for (;;) {
    archive_entry* entry = nullptr;
    const int status = archive_read_next_header(reader.get(), &entry);
    if (status == ARCHIVE_EOF) break;
    if (status < ARCHIVE_WARN) fail(reader.get(), "read header");
    // Entry names are checked here, then placed under root (so the absolute-path guard of
    // libarchive, which would reject root itself, is not used).
    const std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    if (name.empty() || name.front() == '/' || name == ".." || name.rfind("../", 0) == 0 ||
        name.find("/../") != std::string::npos)
      throw std::runtime_error(fmt::format(
          "CIFAR10: {} holds an unsafe entry name '{}'; it is not the CIFAR-10 archive. Delete it "
          "and download again.",
          archive_path, name));
    const auto type = archive_entry_filetype(entry);
    if (type != AE_IFREG && type != AE_IFDIR) {
      archive_read_data_skip(reader.get());
      continue;
    }
    const std::string target = join(root, name);
    archive_entry_set_pathname(entry, target.c_str());
    if (archive_write_header(writer.get(), entry) < ARCHIVE_WARN)
      fail(writer.get(), "write header");
    const void* block = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    for (;;) {
      const int r = archive_read_data_block(reader.get(), &block, &size, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) fail(reader.get(), "read data");
      if (archive_write_data_block(writer.get(), block, size, offset) < ARCHIVE_WARN)
        fail(writer.get(), "write data");
    }
    if (archive_write_finish_entry(writer.get()) < ARCHIVE_WARN) fail(writer.get(), "finish entry");
    ++entries;
  }
  if (entries == 0)
    throw std::runtime_error(fmt::format(
        "CIFAR10: {} holds no files; it is corrupt or not the CIFAR-10 archive. Delete it and "
        "download again.",
        archive_path));
}
#endif

}  // namespace

// ---------------------------------------------------------------- CIFAR10

bool CIFAR10::download_supported() {
#if CPPFABRIC_HAS_CURL && CPPFABRIC_HAS_LIBARCHIVE
  return true;
#else
  return false;
#endif
}

std::string CIFAR10::archive_url(const DownloadOptions& options) {
  return resolve_base_url(options) + options.filename;
}

bool CIFAR10::files_present(const std::string& root, bool train) {
  for (const auto& name : batch_files(train))
    if (!file_exists(join(join(root, kFolder), name))) return false;
  return true;
}

void CIFAR10::download(const std::string& root, const DownloadOptions& options) {
  const std::string url = archive_url(options);
#if CPPFABRIC_HAS_CURL && CPPFABRIC_HAS_LIBARCHIVE
  make_dirs(root);
  const std::string archive_path = join(root, options.filename);
  bool have_archive = file_exists(archive_path) && detail::md5_file(archive_path) == options.md5;
  if (!have_archive) {
    fetch(url, archive_path, options.timeout_s);
    const std::string md5 = detail::md5_file(archive_path);
    if (md5 != options.md5)
      throw std::runtime_error(fmt::format(
          "CIFAR10: checksum mismatch for {} downloaded from {}: MD5 {} but {} expected. The "
          "download is corrupt or not the official archive; delete {} and try again, or check "
          "the mirror.",
          archive_path, url, md5, options.md5, archive_path));
  }
  extract(archive_path, root);
#else
  throw std::runtime_error(fmt::format(
      "CIFAR10: this cppfabric was built without {} so it cannot download {}. Download and "
      "extract it yourself (tar xzf cifar-10-binary.tar.gz -C <root>), or rebuild cppfabric with "
      "libcurl and libarchive (apt-get install libcurl4-openssl-dev libarchive-dev).",
      CPPFABRIC_HAS_CURL ? "libarchive" : "libcurl", url));
#endif
}

CIFAR10::CIFAR10(const std::string& root, bool train, bool download_if_missing,
                 transforms::Transform transform, DownloadOptions download_options)
    : transform_(std::move(transform)) {
  if (!files_present(root, train)) {
    if (!download_if_missing) {
      std::string missing;
      for (const auto& name : batch_files(train)) {
        const std::string path = join(join(root, kFolder), name);
        if (!file_exists(path)) {
          missing = path;
          break;
        }
      }
      throw std::runtime_error(fmt::format(
          "CIFAR10: {} not found. Pass download=true (the example's --download) to fetch {}, or "
          "extract the binary version of CIFAR-10 (cifar-10-binary.tar.gz) into {}.",
          missing, archive_url(download_options), root));
    }
    download(root, download_options);
    if (!files_present(root, train))
      throw std::runtime_error(fmt::format(
          "CIFAR10: {} was downloaded and extracted into {} but {}/ lacks the {} batch files; "
          "it is not the binary version of CIFAR-10.",
          archive_url(download_options), root, kFolder, train ? "training" : "test"));
  }
  std::vector<at::Tensor> images, labels;
  for (const auto& name : batch_files(train)) {
    auto [x, y] = read_batch_file(join(join(root, kFolder), name));
    images.push_back(x);
    labels.push_back(y);
  }
  images_ = images.size() == 1 ? images[0] : at::cat(images);
  labels_ = labels.size() == 1 ? labels[0] : at::cat(labels);
}

Example CIFAR10::get(std::size_t index) const {
  const auto i = static_cast<int64_t>(index);
  if (index >= size())
    throw std::out_of_range(
        fmt::format("CIFAR10: index {} out of range for {} images", index, size()));
  at::Tensor image = images_[i];
  return {transform_ ? transform_(image) : image, labels_[i]};
}

// ---------------------------------------------------------------- SyntheticCIFAR10

SyntheticCIFAR10::SyntheticCIFAR10(std::size_t size, bool train, transforms::Transform transform,
                                   uint64_t seed)
    : transform_(std::move(transform)) {
  const auto n = static_cast<int64_t>(size);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed * 2 + (train ? 0 : 1) + 12345);
  labels_ = at::randint(10, {n}, generator, at::TensorOptions(at::kLong));
  // Per class: a colour and a stripe frequency (1..5) and direction (horizontal for classes 0-4,
  // vertical for 5-9). Each image shows its class's pattern at a random phase and a random
  // strength in [0, 1) over a grey background, plus brightness and pixel noise: strong images are
  // easy, faint ones are hard and blank ones are guesses, so accuracy climbs over the epochs and
  // stays clearly below 100% (about 90% at best).
  static const float palette[10][3] = {{0.9f, 0.2f, 0.2f}, {0.2f, 0.9f, 0.2f}, {0.2f, 0.2f, 0.9f},
                                       {0.9f, 0.9f, 0.2f}, {0.9f, 0.2f, 0.9f}, {0.2f, 0.9f, 0.9f},
                                       {0.6f, 0.4f, 0.2f}, {0.3f, 0.6f, 0.5f}, {0.5f, 0.3f, 0.7f},
                                       {0.7f, 0.7f, 0.7f}};
  const auto f32 = at::TensorOptions(at::kFloat);
  const auto colours = at::from_blob(const_cast<float*>(&palette[0][0]), {10, 3}, f32).clone();
  const auto frequencies = at::arange(10, f32).remainder(5) + 1;
  const auto grid = at::arange(kSide, f32) / static_cast<double>(kSide);
  const auto rows = grid.view({1, kSide, 1}).expand({1, kSide, kSide});
  const auto cols = grid.view({1, 1, kSide}).expand({1, kSide, kSide});
  images_ = at::empty({n, kSide, kSide, 3}, at::kByte);
  constexpr int64_t chunk = 4096;
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t count = std::min(chunk, n - start);
    const auto labels = labels_.narrow(0, start, count);
    // One image in eight carries no signal at all: no model gets those right but by chance.
    const auto strength =
        at::rand({count, 1, 1, 1}, generator, f32)
            .masked_fill_(at::rand({count, 1, 1, 1}, generator, f32) < 0.125, 0.0);
    const auto phase = at::rand({count, 1, 1}, generator, f32);
    const auto coordinate = at::where((labels < 5).view({count, 1, 1}), rows, cols);
    const auto stripe =
        0.5 + 0.5 * at::sin(2.0 * std::numbers::pi *
                            (frequencies.index_select(0, labels).view({count, 1, 1}) * coordinate +
                             phase));
    const auto pattern = 255.0 * colours.index_select(0, labels).view({count, 1, 1, 3}) *
                         (0.55 + 0.45 * stripe.unsqueeze(3));
    const auto brightness = at::randn({count, 1, 1, 1}, generator, f32) * 20.0;
    const auto noise = at::randn({count, kSide, kSide, 3}, generator, f32) * 50.0;
    images_.narrow(0, start, count)
        .copy_((128.0 + strength * (pattern - 128.0) + brightness + noise).clamp_(0, 255).round_());
  }
}

Example SyntheticCIFAR10::get(std::size_t index) const {
  if (index >= size())
    throw std::out_of_range(
        fmt::format("SyntheticCIFAR10: index {} out of range for {} images", index, size()));
  const auto i = static_cast<int64_t>(index);
  at::Tensor image = images_[i];
  return {transform_ ? transform_(image) : image, labels_[i]};
}

}  // namespace cppfabric::data::datasets
