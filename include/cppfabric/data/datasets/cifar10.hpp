// CIFAR-10 (the official binary version) and a synthetic stand-in with the same shapes.
//
//   namespace T = cppfabric::data::transforms;
//   cppfabric::data::datasets::CIFAR10 train("data", /*train=*/true, /*download=*/true,
//                                            T::Compose({T::ToTensor()}));
//   train.size();                         // 50000
//   auto example = train.get(0);          // data: transform(uint8 32x32x3 image), target: int64
//
// Files: <root>/cifar-10-batches-bin/data_batch_{1..5}.bin and test_batch.bin, each a sequence of
// 3073-byte records (one label byte, then the red, green and blue 32x32 planes). With download,
// missing files are fetched from <base_url>cifar-10-binary.tar.gz (libcurl), checked against the
// archive's MD5 and unpacked (libarchive). The base URL comes from DownloadOptions, else the
// CPPFABRIC_CIFAR10_URL environment variable, else the official site. A build without libcurl or
// libarchive reads existing files but throws when asked to download.
//
// Images are kept as uint8 H x W x C (torchvision's layout for CIFAR-10), so transforms see what
// torchvision's see; without a transform get() returns that uint8 image.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "cppfabric/data/dataset.hpp"
#include "cppfabric/data/transforms.hpp"

namespace cppfabric::data::datasets {

/// Where the archive comes from and what it must hash to.
struct DownloadOptions {
  /// Folder URL ending in '/', e.g. "http://127.0.0.1:8000/"; empty: CPPFABRIC_CIFAR10_URL or the
  /// official "https://www.cs.toronto.edu/~kriz/".
  std::string base_url = "";
  std::string filename = "cifar-10-binary.tar.gz";
  std::string md5 = "c32a1d4ab5d03f1284b67883e8d87530";
  /// Seconds before a stalled download is abandoned.
  long timeout_s = 600;
};

class CIFAR10 : public Dataset {
 public:
  static constexpr int64_t kRecordBytes = 3073;
  static constexpr const char* kFolder = "cifar-10-batches-bin";
  static constexpr const char* kClasses[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                               "dog",      "frog",       "horse", "ship", "truck"};

  /// Throws std::runtime_error naming the file and what to do when files are missing (and
  /// download is false), the download fails, the checksum differs, or a batch file is corrupt.
  CIFAR10(const std::string& root, bool train = true, bool download = false,
          transforms::Transform transform = {}, DownloadOptions download_options = {});

  std::size_t size() const override { return static_cast<std::size_t>(labels_.size(0)); }
  Example get(std::size_t index) const override;

  /// All images, uint8 [N, 32, 32, 3], and labels, int64 [N].
  const at::Tensor& images() const { return images_; }
  const at::Tensor& labels() const { return labels_; }

  /// Whether every batch file of the split exists under root.
  static bool files_present(const std::string& root, bool train);
  /// Downloads, checks and unpacks the archive into root (what download=true does).
  static void download(const std::string& root, const DownloadOptions& options = {});
  /// The URL download() fetches.
  static std::string archive_url(const DownloadOptions& options = {});
  /// False when this build lacks libcurl or libarchive.
  static bool download_supported();

 private:
  at::Tensor images_, labels_;
  transforms::Transform transform_;
};

/// Random-but-learnable CIFAR-10 look-alike: class k images carry a class-specific colour and
/// stripe pattern at a random phase and a random strength, buried in noise (faint images are
/// hard, so accuracy rises over epochs and stays well below 100%). Deterministic for a given
/// seed; same shapes and dtypes as CIFAR10.
class SyntheticCIFAR10 : public Dataset {
 public:
  SyntheticCIFAR10(std::size_t size = 50000, bool train = true,
                   transforms::Transform transform = {}, uint64_t seed = 0);
  std::size_t size() const override { return static_cast<std::size_t>(labels_.size(0)); }
  Example get(std::size_t index) const override;
  const at::Tensor& images() const { return images_; }
  const at::Tensor& labels() const { return labels_; }

 private:
  at::Tensor images_, labels_;
  transforms::Transform transform_;
};

}  // namespace cppfabric::data::datasets
