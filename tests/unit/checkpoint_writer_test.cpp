// cppfabric's own torch.save zip writer (checkpoint/zip_archive.cpp) against LibTorch's
// PyTorchStreamWriter, byte for byte, including the zip64 forms (records and offsets past
// 4 GiB); its CRC-32 against zlib's definition; and the mapped reader's paths (aligned and
// unaligned records, small records copied, truncated and corrupt files, non-durable saves).
#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/zip_archive.hpp"
#include "pickle_builders.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Value;
namespace ck = cppfabric::checkpoint;
namespace ckd = cppfabric::checkpoint::detail;
using Storages = std::vector<std::pair<std::string, at::Tensor>>;

// The bytes LibTorch's writer makes of the records write_zip_archive writes.
template <typename Sink>
void reference_archive(const std::string& pickle, const Storages& storages, Sink&& sink) {
  caffe2::serialize::PyTorchStreamWriter writer(
      [&](const void* d, size_t n) -> size_t { return sink(d, n); });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeRecord(".format_version", "1", 1);
  writer.writeRecord(".storage_alignment", "64", 2);
  writer.writeRecord("byteorder", "little", 6);
  for (const auto& [key, t] : storages) writer.writeRecord("data/" + key, t.data_ptr(), t.nbytes());
  writer.writeEndOfFile();
}

std::string ours(const std::string& pickle, const Storages& storages) {
  std::string out;
  ckd::write_zip_archive(pickle, storages, [&](const void* d, size_t n) {
    out.append(static_cast<const char*>(d), n);
    return n;
  });
  return out;
}

std::string theirs(const std::string& pickle, const Storages& storages) {
  std::string out;
  reference_archive(pickle, storages, [&](const void* d, size_t n) {
    out.append(static_cast<const char*>(d), n);
    return n;
  });
  return out;
}

at::Tensor bytes_tensor(const std::string& s) {
  auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint32_t bitwise_crc32(const unsigned char* p, std::size_t n) {
  uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
  }
  return ~c;
}

TEST(CheckpointWriter, Crc32MatchesTheDefinitionAtEveryLengthAndAlignment) {
  EXPECT_EQ(ckd::crc32(0, "123456789", 9), 0xcbf43926u);  // the standard check value
  std::mt19937 rng(7);
  std::string data(5000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  for (std::size_t offset : {0, 1, 3, 8, 15}) {
    for (std::size_t n : {0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 1000, 4096}) {
      ASSERT_EQ(ckd::crc32(0, p + offset, n), bitwise_crc32(p + offset, n))
          << "offset " << offset << " length " << n;
      // Continuing a CRC over two pieces equals the CRC of the whole.
      const std::size_t half = n / 3;
      ASSERT_EQ(ckd::crc32(ckd::crc32(0, p + offset, half), p + offset + half, n - half),
                bitwise_crc32(p + offset, n));
    }
  }
}

TEST(CheckpointWriter, BytesEqualPyTorchStreamWriters) {
  std::mt19937 rng(11);
  auto random_bytes = [&](std::size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  };
  // Sizes around the padding, the descriptor and the 1 MiB CRC chunk; an empty record (no data
  // descriptor); a record whose data starts like a data descriptor (LibTorch folds its "CRC"
  // into the serialization id).
  std::string lookalike = random_bytes(40);
  const char sig[4] = {'P', 'K', 7, 8};
  std::memcpy(lookalike.data(), sig, 4);
  Storages storages;
  int key = 0;
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{63},
        std::size_t{64}, std::size_t{65}, std::size_t{4099}, (std::size_t{1} << 20) - 1,
        (std::size_t{1} << 20) + 5, (std::size_t{3} << 20) + 17}) {
    storages.emplace_back(std::to_string(key++), bytes_tensor(random_bytes(n)));
  }
  storages.emplace_back(std::to_string(key++), bytes_tensor(lookalike));
  for (const std::string& pickle : {std::string(), random_bytes(3), random_bytes(239)}) {
    const std::string a = ours(pickle, storages), b = theirs(pickle, storages);
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "first difference at " << i;
  }
  // Many records (the serialization id hashes their names in the set's order).
  Storages many;
  for (int i = 0; i < 300; ++i) many.emplace_back(std::to_string(i), bytes_tensor(random_bytes(i)));
  EXPECT_TRUE(ours("x", many) == theirs("x", many));
}

// A read-only anonymous mapping: pages of zeros that cost no memory until written.
struct ZeroPages {
  explicit ZeroPages(std::size_t n) : size(n) {
    p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~ZeroPages() {
    if (p != MAP_FAILED) ::munmap(p, size);
  }
  void* p;
  std::size_t size;
};

// Length and CRC of everything a writer emits: a streaming fingerprint for archives too large to
// keep.
struct Fingerprint {
  uint64_t size = 0;
  uint32_t crc = 0;
  std::string head;  // the bytes of every piece shorter than 4 KiB, in order (the headers)
  size_t operator()(const void* d, size_t n) {
    crc = ckd::crc32(crc, d, n);
    size += n;
    if (n < 4096) head.append(static_cast<const char*>(d), n);
    return n;
  }
};

TEST(CheckpointWriter, Zip64RecordsAndOffsetsEqualPyTorchStreamWriters) {
  // A record of 4 GiB + 1 MiB (zip64 sizes; whole 1 MiB pieces, so the fingerprint's headers
  // hold no data) and records after it (zip64 offsets).
  const std::size_t big = (std::size_t{1} << 32) + (std::size_t{1} << 20);
  ZeroPages zeros(big);
  ASSERT_NE(zeros.p, MAP_FAILED);
  Storages storages;
  storages.emplace_back("0", torch::from_blob(zeros.p, {static_cast<int64_t>(big)},
                                              torch::TensorOptions().dtype(torch::kUInt8)));
  storages.emplace_back("1", bytes_tensor("after the big one"));
  storages.emplace_back("2", bytes_tensor(""));
  Fingerprint a, b;
  ckd::write_zip_archive("pickle", storages, std::ref(a));
  reference_archive("pickle", storages, std::ref(b));
  EXPECT_EQ(a.size, b.size);
  EXPECT_EQ(a.head, b.head);
  EXPECT_EQ(a.crc, b.crc);
  EXPECT_GT(a.size, big);
}

TEST(CheckpointWriter, AShortSinkIsAnError) {
  Storages storages{{"0", torch::ones({1000})}};
  std::size_t taken = 0;
  EXPECT_THROW_WITH(ckd::write_zip_archive("p", storages,
                                           [&](const void*, size_t n) -> size_t {
                                             taken += n;
                                             return taken > 2000 ? n / 2 : n;
                                           }),
                    std::runtime_error, "short write");
}

std::string temp_dir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "cppfabric_writer_" + name + "_" + std::to_string(::getpid());
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

TEST(CheckpointWriter, NonDurableSavesReadBackTheSame) {
  const std::string path = temp_dir("nondurable") + "/c.pt";
  const Value v =
      Value::dict({{Value("w"), Value(torch::randn({300, 7}))}, {Value("n"), Value(int64_t{3})}});
  ck::SaveOptions fast;
  fast.durable = false;
  ck::save_torch_file(v, path, fast);
  EXPECT_TRUE(ck::load_torch_file(path) == v);
  ck::save_torch_file(v, path);
  EXPECT_TRUE(ck::load_torch_file(path) == v);
}

// ------------------------------------------------------------------ the mapped reader

ck::ReadLimits map_everything() {
  ck::ReadLimits limits;
  limits.map_file = true;
  limits.map_min_file_bytes = 0;
  limits.map_min_record_bytes = 0;
  return limits;
}

// Whether `t`'s memory lies inside the file mapping (not an owned copy): its storage is not
// resizable and was not allocated by the CPU allocator.
bool is_mapped(const at::Tensor& t) {
  return t.storage().data_ptr().get_deleter() != c10::GetCPUAllocator()->raw_deleter();
}

// {'t': a float64 tensor of `numel` elements in storage "0"}, as torch.save pickles it.
std::string double_tensor_pickle(int numel) {
  using namespace cppfabric::testing::pickle;
  std::string p = kProto;
  p.append(byte('}')).append(unicode("t"));
  p.append(global("torch._utils", "_rebuild_tensor_v2")).append(byte('('));
  p.append(byte('(')).append(unicode("storage")).append(global("torch", "DoubleStorage"));
  p.append(unicode("0")).append(unicode("cpu")).append(long1(numel)).append(byte('t'));
  p.append(byte('Q'));
  p.append(long1(0)).append(long1(numel)).append(byte(0x85)).append(long1(1)).append(byte(0x85));
  p.append(byte(0x89)).append(global("collections", "OrderedDict")).append(byte(')'));
  p.append(byte('R')).append(byte('t')).append(byte('R')).append(byte('s')).append(byte('.'));
  return p;
}

// A stored zip without torch.save's padding: archive/data.pkl, a filler record sized so that
// archive/data/0's data starts at an offset `residue` modulo 8, then archive/data/0.
std::string plain_zip(const std::string& pickle, const std::string& storage, int residue) {
  using namespace cppfabric::testing::pickle;
  std::string out, central;
  int entries = 0;
  const auto add = [&](const std::string& name, const std::string& data) {
    const uint32_t crc = ckd::crc32(0, data.data(), data.size());
    const uint32_t offset = static_cast<uint32_t>(out.size());
    std::string h = u32le(0x04034b50);
    h.append(byte(20)).append(byte(0)).append(byte(0)).append(byte(0)).append(byte(0));
    h.append(byte(0)).append(u32le(0)).append(u32le(crc));
    h.append(u32le(static_cast<uint32_t>(data.size())))
        .append(u32le(static_cast<uint32_t>(data.size())));
    h.append(byte(static_cast<int>(name.size()))).append(byte(0)).append(byte(0)).append(byte(0));
    out.append(h).append(name).append(data);
    std::string c = u32le(0x02014b50);
    c.append(byte(20)).append(byte(0)).append(byte(20)).append(byte(0)).append(byte(0));
    c.append(byte(0)).append(byte(0)).append(byte(0)).append(u32le(0)).append(u32le(crc));
    c.append(u32le(static_cast<uint32_t>(data.size())))
        .append(u32le(static_cast<uint32_t>(data.size())));
    c.append(byte(static_cast<int>(name.size()))).append(byte(0));
    for (int i = 0; i < 8; ++i) c.append(byte(0));
    c.append(u32le(0)).append(u32le(offset)).append(name);
    central.append(c);
    ++entries;
  };
  add("archive/data.pkl", pickle);
  const std::string last = "archive/data/0";
  const std::size_t before_filler = out.size() + 30 + std::string("archive/f").size();
  const std::size_t next_data = before_filler + 30 + last.size();  // with an empty filler
  const std::size_t filler = (residue - next_data % 8 + 8) % 8;
  add("archive/f", std::string(filler, 'x'));
  add(last, storage);
  const uint32_t cd_offset = static_cast<uint32_t>(out.size());
  out.append(central);
  std::string end = u32le(0x06054b50);
  end.append(u32le(0)).append(byte(entries)).append(byte(0)).append(byte(entries)).append(byte(0));
  end.append(u32le(static_cast<uint32_t>(central.size()))).append(u32le(cd_offset));
  end.append(byte(0)).append(byte(0));
  return out.append(end);
}

TEST(CheckpointMappedReader, AlignedRecordsAreMappedUnalignedAndSmallOnesCopied) {
  const std::string dir = temp_dir("aligned");
  const std::string path = dir + "/a.pt";
  const Value v = Value::dict({{Value("big"), Value(torch::arange(100000, torch::kFloat))},
                               {Value("small"), Value(torch::arange(10, torch::kLong))},
                               {Value("half"), Value(torch::ones({40000}, torch::kHalf))},
                               {Value("d"), Value(torch::randn({9000}, torch::kDouble))}});
  ck::save_torch_file(v, path);
  {
    const Value back = ck::load_torch_file(path, map_everything());
    EXPECT_TRUE(back == v);
    EXPECT_TRUE(is_mapped(back.at("big").to_tensor()));
    EXPECT_TRUE(is_mapped(back.at("small").to_tensor()));
  }
  {
    // Defaults: a file over 1 MiB is mapped, records under 64 KiB copied.
    ck::ReadLimits defaults;
    defaults.map_min_file_bytes = 0;
    const Value back = ck::load_torch_file(path, defaults);
    EXPECT_TRUE(back == v);
    EXPECT_TRUE(is_mapped(back.at("big").to_tensor()));
    EXPECT_FALSE(is_mapped(back.at("small").to_tensor()));
    EXPECT_TRUE(is_mapped(back.at("half").to_tensor()));
  }
  {
    ck::ReadLimits copies;
    copies.map_file = false;
    const Value back = ck::load_torch_file(path, copies);
    EXPECT_TRUE(back == v);
    EXPECT_FALSE(is_mapped(back.at("big").to_tensor()));
  }
  // Records that are not aligned for their dtype (a zip writer without torch.save's padding)
  // are copied, and still equal.
  std::string payload(800, '\0');
  for (int i = 0; i < 100; ++i) {
    const double x = i * 0.5;
    std::memcpy(payload.data() + 8 * i, &x, 8);
  }
  for (int residue = 0; residue < 8; ++residue) {
    const std::string file = dir + "/u" + std::to_string(residue) + ".pt";
    write_file(file, plain_zip(double_tensor_pickle(100), payload, residue));
    const Value back = ck::load_torch_file(file, map_everything());
    const at::Tensor t = back.at("t").to_tensor();
    EXPECT_TRUE(torch::equal(t, torch::arange(100, torch::kDouble) * 0.5)) << "residue " << residue;
    EXPECT_EQ(is_mapped(t), residue == 0) << "residue " << residue;
  }
}

TEST(CheckpointMappedReader, TruncatedAndCorruptFilesAreCleanErrors) {
  const std::string dir = temp_dir("trunc");
  const std::string path = dir + "/t.pt";
  ck::save_torch_file(Value::dict({{Value("w"), Value(torch::arange(50000, torch::kFloat))},
                                   {Value("b"), Value(torch::ones({3}))}}),
                      path);
  const std::string bytes = read_file(path);
  const std::string cut = dir + "/cut.pt";
  int errors = 0, tries = 0;
  for (std::size_t n = 0; n < bytes.size(); n += bytes.size() / 97 + 1) {
    write_file(cut, bytes.substr(0, n));
    ++tries;
    try {
      ck::load_torch_file(cut, map_everything());
    } catch (const std::runtime_error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(errors, tries);
  // One flipped bit in a mapped record fails its CRC.
  std::string corrupt = bytes;
  corrupt[corrupt.size() / 2] ^= 0x10;
  write_file(cut, corrupt);
  EXPECT_THROW_WITH(ck::load_torch_file(cut, map_everything()), std::runtime_error, cut, "CRC");
}

// Records over 4 MiB are read and CRC-checked in 4 MiB pieces: the values come back whole, and a
// flipped bit in any piece (the last, short one included) fails the check, mapped and copied.
TEST(CheckpointMappedReader, LargeRecordsAreCheckedInPieces) {
  const std::string dir = temp_dir("pieces");
  const std::string path = dir + "/p.pt";
  const int64_t n = ((int64_t{9} << 20) + 12345) / 4;  // 9 MiB + a short last piece
  const at::Tensor t = torch::arange(n, torch::kInt);
  ck::save_torch_file(Value::dict({{Value("t"), Value(t)}}), path);
  ck::ReadLimits copies;
  copies.map_file = false;
  EXPECT_TRUE(torch::equal(ck::load_torch_file(path).at("t").to_tensor(), t));
  EXPECT_TRUE(torch::equal(ck::load_torch_file(path, copies).at("t").to_tensor(), t));
  const std::string bytes = read_file(path);
  const int32_t probe_values[] = {1, static_cast<int32_t>((5 << 20) / 4),
                                  static_cast<int32_t>(n - 2)};
  for (int32_t value : probe_values) {
    std::string corrupt = bytes;
    const auto at = corrupt.find(std::string(reinterpret_cast<const char*>(&value), 4));
    ASSERT_NE(at, std::string::npos);
    corrupt[at] ^= 0x01;
    const std::string bad = dir + "/bad.pt";
    write_file(bad, corrupt);
    EXPECT_THROW_WITH(ck::load_torch_file(bad), std::runtime_error, "CRC");
    EXPECT_THROW_WITH(ck::load_torch_file(bad, copies), std::runtime_error, "CRC");
  }
}

// Files large enough for the default mapped load, across the language line: Python reads what
// both save modes write, and cppfabric maps what torch.save writes (dtypes of every width, a
// view, records at and over the 64 KiB copy threshold).
TEST(CheckpointMappedReader, LargeFilesCrossToPythonAndBack) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "bootstrapped venv missing";
  const std::string dir = temp_dir("python");
  auto big = torch::arange(1 << 19, torch::kFloat).reshape({512, 1024});
  const Value v = Value::dict({{Value("big"), Value(big)},
                               {Value("row"), Value(big[7])},
                               {Value("d"), Value(torch::arange(20000, torch::kDouble) / 3)},
                               {Value("h"), Value(torch::ones({40000}, torch::kHalf))},
                               {Value("i8"), Value(torch::arange(100, torch::kChar))}});
  ck::save_torch_file(v, dir + "/durable.pt");
  ck::SaveOptions fast;
  fast.durable = false;
  ck::save_torch_file(v, dir + "/fast.pt", fast);
  const std::string check =
      "import sys, torch\n"
      "for p in sys.argv[1:3]:\n"
      "    s = torch.load(p, weights_only=True)\n"
      "    big = torch.arange(1 << 19, dtype=torch.float).reshape(512, 1024)\n"
      "    assert torch.equal(s['big'], big) and torch.equal(s['row'], big[7]), p\n"
      "    assert s['row'].untyped_storage().data_ptr() == s['big'].untyped_storage().data_ptr()\n"
      "    assert torch.equal(s['d'], torch.arange(20000, dtype=torch.double) / 3), p\n"
      "    assert torch.equal(s['h'], torch.ones(40000, dtype=torch.half)), p\n"
      "    assert torch.equal(s['i8'], torch.arange(100, dtype=torch.int8)), p\n"
      "torch.save({'w': torch.arange(300000, dtype=torch.float) * 0.5,\n"
      "            'l': torch.arange(70000, dtype=torch.long), 'b': torch.tensor([True, False]),\n"
      "            'bf': torch.ones(50000, dtype=torch.bfloat16)}, sys.argv[3])\n"
      "print('python ok')\n";
  const std::string script = dir + "/check.py";
  write_file(script, check);
  int status = 0;
  const std::string out =
      cppfabric::testing::run_command(*python + " " + script + " " + dir + "/durable.pt " + dir +
                                          "/fast.pt " + dir + "/from_python.pt 2>&1",
                                      &status);
  ASSERT_EQ(status, 0) << out;
  ASSERT_NE(out.find("python ok"), std::string::npos) << out;
  const Value back = ck::load_torch_file(dir + "/from_python.pt");  // > 1 MiB: mapped
  EXPECT_TRUE(torch::equal(back.at("w").to_tensor(), torch::arange(300000, torch::kFloat) * 0.5));
  EXPECT_TRUE(is_mapped(back.at("w").to_tensor()));
  EXPECT_TRUE(torch::equal(back.at("l").to_tensor(), torch::arange(70000, torch::kLong)));
  EXPECT_TRUE(torch::equal(back.at("b").to_tensor(), torch::tensor({true, false})));
  EXPECT_FALSE(is_mapped(back.at("b").to_tensor()));
  EXPECT_TRUE(torch::equal(back.at("bf").to_tensor(), torch::ones({50000}, torch::kBFloat16)));
}

}  // namespace
