// Malformed and hostile GGUF files: each must fail with an error that names
// what is wrong and where, never crash or read out of bounds.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/gguf/test_files.h"

namespace pdserve::gguf {
namespace {

using testing::Bytes;
using testing::FindTensorInfo;
using ::testing::HasSubstr;
using testing::KeyValueAt;
using testing::Patch;
using ::testing::StartsWith;

constexpr uint64_t kHuge = uint64_t{1} << 63;

// The error message of parsing `bytes`, which must fail with InvalidArgument.
std::string ErrorOf(const std::string& bytes, const ReadLimits& limits = {}) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(bytes, limits);
  EXPECT_FALSE(f.ok()) << "parsed a malformed file";
  if (f.ok()) return "";
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  EXPECT_THAT(std::string(f.status().message()), StartsWith("gguf: "));
  return std::string(f.status().message());
}

// A header with the given counts and nothing after it.
std::string Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  std::string h = "GGUF";
  h.append(4 + 8 + 8, '\0');
  Patch(&h, 4, version);
  Patch(&h, 8, n_tensors);
  Patch(&h, 16, n_kv);
  return h;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(getpid()) + ".gguf"))
      .string();
}

// ---- Files that cannot be read ----

TEST(GgufMalformed, MissingFile) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open("/nonexistent/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(f.status().message()),
            "gguf: cannot open '/nonexistent/model.gguf': No such file or directory");
}

TEST(GgufMalformed, Directory) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open("/tmp");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(std::string(f.status().message()), "gguf: cannot open '/tmp': Is a directory");
}

TEST(GgufMalformed, NotARegularFile) {
  const std::string path = TempPath("gguf_fifo");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  unlink(path.c_str());
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("not a regular file"));
}

TEST(GgufMalformed, UnreadableFile) {
  const std::string path = TempPath("gguf_unreadable");
  ASSERT_TRUE(testing::SmallModelWriter().WriteFile(path).ok());
  ASSERT_EQ(chmod(path.c_str(), 0), 0);
  auto check = [&path] {
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
    return !f.ok() && f.status().code() == absl::StatusCode::kPermissionDenied &&
           f.status().message() == "gguf: cannot open '" + path + "': Permission denied";
  };
  if (geteuid() != 0) {
    EXPECT_TRUE(check());
  } else {
    // Root reads mode-000 files; check as an unprivileged user in a child.
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
      _exit(check() ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "2: could not drop privileges, 1: wrong error";
  }
  unlink(path.c_str());
}

TEST(GgufMalformed, PathThroughAFile) {
  const std::string path = TempPath("gguf_not_a_dir");
  ASSERT_TRUE(testing::SmallModelWriter().WriteFile(path).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path + "/model.gguf");
  unlink(path.c_str());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(std::string(f.status().message()),
            "gguf: cannot open '" + path + "/model.gguf': Not a directory");
}

TEST(GgufMalformed, EmptyFileOnDisk) {
  const std::string path = TempPath("gguf_empty");
  FILE* fp = fopen(path.c_str(), "w");
  ASSERT_NE(fp, nullptr);
  fclose(fp);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  unlink(path.c_str());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(
      std::string(f.status().message()),
      "gguf: truncated at byte 0 while reading magic (4 bytes at offset 0) in '" + path + "'");
}

// ---- Header ----

TEST(GgufMalformed, BadMagic) {
  std::string bytes = testing::SmallModel();
  bytes.replace(0, 4,
                "\x7f"
                "ELF");
  EXPECT_EQ(ErrorOf(bytes), "gguf: bad magic 0x7f454c46 (not a GGUF file)");
}

TEST(GgufMalformed, UnsupportedVersions) {
  for (uint32_t version : {0u, 1u, 4u, 0xffffffffu}) {
    std::string bytes = testing::SmallModel();
    Patch(&bytes, 4, version);
    EXPECT_EQ(ErrorOf(bytes),
              "gguf: unsupported version " + std::to_string(version) + " (supported: 2, 3)");
  }
}

TEST(GgufMalformed, BigEndianFile) {
  std::string bytes = testing::SmallModel();
  Patch<uint32_t>(&bytes, 4, __builtin_bswap32(3));
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("big-endian GGUF file (version 3) is not supported"));
}

// ---- Truncation ----

// Every proper prefix of a valid file that cuts into the header, metadata,
// tensor infos or tensor data must fail cleanly.
TEST(GgufMalformed, TruncatedAtEveryByte) {
  for (const std::string& full :
       {testing::SmallModel(), testing::AllValueTypes(), testing::SmallVocab()}) {
    auto whole = GgufFile::FromBytes(full);
    ASSERT_TRUE(whole.ok()) << whole.status();
    // Bytes needed: the end of the last tensor, or the end of the metadata
    // (a file without tensors may stop right there).
    uint64_t needed = (*whole)->tensors().empty() ? full.size() : 0;
    for (const TensorInfo& t : (*whole)->tensors()) {
      needed = std::max(needed, (*whole)->data_offset() + t.offset + t.n_bytes);
    }
    for (size_t len = 0; len < full.size(); ++len) {
      absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(full.substr(0, len));
      if (len >= needed) {
        EXPECT_TRUE(f.ok()) << "prefix " << len << ": " << f.status();
        continue;
      }
      ASSERT_FALSE(f.ok()) << "prefix of " << len << " bytes parsed";
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
      const std::string m(f.status().message());
      EXPECT_TRUE(
          absl::StrContains(m, absl::StrCat("gguf: truncated at byte ", len, " while reading ")) ||
          absl::StrContains(m, "extends past end of file"))
          << "prefix " << len << ": " << m;
    }
  }
}

TEST(GgufMalformed, TruncationMessageNamesTheField) {
  const std::string full = testing::SmallModel();
  const size_t key3 = KeyValueAt(full, "llama.embedding_length");  // key #3
  // Cut inside the length of key #4 (the next one after key #3's u64 value).
  const size_t len = key3 + 4 + 8 + 3;
  EXPECT_EQ(ErrorOf(full.substr(0, len)),
            absl::StrCat("gguf: truncated at byte ", len,
                         " while reading length of key #4 (8 bytes at offset ", key3 + 12, ")"));
}

TEST(GgufMalformed, TensorDataPastEndOfFile) {
  std::string bytes = testing::SmallModel();
  auto whole = GgufFile::FromBytes(bytes);
  ASSERT_TRUE(whole.ok());
  const uint64_t data = (*whole)->data_offset();
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "norm").offset, 4096);
  EXPECT_EQ(ErrorOf(bytes),
            absl::StrCat("gguf: tensor 'norm': data [offset ", data + 4096,
                         ", 32 bytes) extends past end of file (size ", bytes.size(), ")"));
  // An offset so large that adding the data section start overflows.
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "norm").offset, ~uint64_t{31});
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("tensor 'norm': data offset 18446744073709551584"));
}

// ---- Counts, lengths and limits ----

TEST(GgufMalformed, AbsurdHeaderCounts) {
  for (uint64_t n : {kHuge, ~uint64_t{0}, uint64_t{1} << 40}) {
    EXPECT_THAT(ErrorOf(Header(3, n, 0)),
                HasSubstr("tensor count " + std::to_string(n) + " exceeds the limit"));
    EXPECT_THAT(ErrorOf(Header(3, 0, n)),
                HasSubstr("metadata count " + std::to_string(n) + " exceeds the limit"));
  }
  // Within the limits but far more than the file holds: truncation, and no
  // allocation sized by the count.
  EXPECT_THAT(ErrorOf(Header(3, 1 << 20, 0)),
              HasSubstr("while reading length of name of tensor #0"));
  EXPECT_THAT(ErrorOf(Header(3, 0, 1 << 16)), HasSubstr("while reading length of key #0"));
  ReadLimits no_limits;
  no_limits.max_kv_count = ~uint64_t{0};
  no_limits.max_tensor_count = ~uint64_t{0};
  EXPECT_THAT(ErrorOf(Header(3, kHuge, kHuge), no_limits), HasSubstr("truncated at byte 24"));
}

TEST(GgufMalformed, AbsurdStringLength) {
  std::string bytes = Header(3, 0, 1);
  bytes.append(8, '\0');
  Patch<uint64_t>(&bytes, 24, kHuge);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: key #0: string length 9223372036854775808 at offset 24 exceeds the limit of "
            "67108864");
  ReadLimits no_limits;
  no_limits.max_string_bytes = ~uint64_t{0};
  EXPECT_THAT(ErrorOf(bytes, no_limits),
              HasSubstr("truncated at byte 32 while reading key #0 (9223372036854775808 bytes"));
}

TEST(GgufMalformed, StringValueOverLimit) {
  GgufWriter w;
  w.SetString("k", std::string(100, 'x'));
  ReadLimits limits;
  limits.max_string_bytes = 99;
  EXPECT_THAT(ErrorOf(w.Serialize(), limits),
              HasSubstr("key 'k': string length 100 at offset 37 exceeds the limit of 99"));
  limits.max_string_bytes = 100;
  EXPECT_TRUE(GgufFile::FromBytes(w.Serialize(), limits).ok());
}

TEST(GgufMalformed, AbsurdArrayLengths) {
  // 2^63 u64 elements: over the limit; without the limit, the byte count
  // overflows.
  GgufWriter w;
  w.SetRawArray("a", ValueType::kUint64, kHuge, "");
  EXPECT_THAT(ErrorOf(w.Serialize()),
              HasSubstr("key 'a': array of 9223372036854775808 elements exceeds the limit"));
  ReadLimits no_limits;
  no_limits.max_array_elements = ~uint64_t{0};
  EXPECT_THAT(ErrorOf(w.Serialize(), no_limits),
              HasSubstr("key 'a': array of 9223372036854775808 uint64 elements overflows"));
  // Fits uint64 but not the file.
  w.SetRawArray("a", ValueType::kUint32, uint64_t{1} << 40, "");
  EXPECT_THAT(ErrorOf(w.Serialize(), no_limits),
              HasSubstr("while reading 1099511627776 uint32 elements of key 'a'"));
  // A string array whose count the file cannot hold: no huge reservation.
  w.SetRawArray("a", ValueType::kString, uint64_t{1} << 40, "");
  EXPECT_THAT(ErrorOf(w.Serialize(), no_limits),
              HasSubstr("while reading length of element #0 of key 'a'"));
  // Just over a small limit.
  GgufWriter small;
  small.SetInt32Array("a", {1, 2, 3});
  ReadLimits limits;
  limits.max_array_elements = 2;
  EXPECT_THAT(ErrorOf(small.Serialize(), limits),
              HasSubstr("key 'a': array of 3 elements exceeds the limit of 2"));
}

// ---- Value types ----

TEST(GgufMalformed, UnknownValueType) {
  GgufWriter w;
  w.SetUint32("fine", 1);
  w.SetRaw("odd.key", static_cast<ValueType>(13), "");
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key 'odd.key': unknown value type 13");
  w.SetRaw("odd.key", static_cast<ValueType>(0xffffffff), "");
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key 'odd.key': unknown value type 4294967295");
}

TEST(GgufMalformed, UnknownArrayElementType) {
  GgufWriter w;
  w.SetRawArray("arr", static_cast<ValueType>(99), 0, "");
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key 'arr': unknown array element type 99");
}

TEST(GgufMalformed, NestedArraysAreRejected) {
  GgufWriter w;
  std::string inner;
  inner.append("\x05\x00\x00\x00", 4);    // int32
  inner.append("\x01\0\0\0\0\0\0\0", 8);  // one element
  inner.append("\x07\x00\x00\x00", 4);
  w.SetRawArray("arr", ValueType::kArray, 1, inner);
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key 'arr': nested arrays are not supported");
}

TEST(GgufMalformed, BoolMustBeZeroOrOne) {
  GgufWriter w;
  w.SetRaw("b", ValueType::kBool, "\x02");
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key 'b': bool value 2 is neither 0 nor 1");
  GgufWriter a;
  a.SetRawArray("b", ValueType::kBool, 3, std::string("\x00\x01\xff", 3));
  EXPECT_EQ(ErrorOf(a.Serialize()), "gguf: key 'b' element #2: bool value 255 is neither 0 nor 1");
}

// ---- Keys ----

TEST(GgufMalformed, DuplicateKeys) {
  GgufWriter w;
  w.SetUint32("dup.a", 1);
  w.SetString("dup.b", "x");
  std::string bytes = w.Serialize();
  const size_t b = KeyValueAt(bytes, "dup.b");
  bytes[b - 1] = 'a';
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("gguf: duplicate key 'dup.a' (key #1 at offset"));
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("first was key #0"));
}

TEST(GgufMalformed, InvalidUtf8InKeys) {
  for (const char* bad : {"bad\xff", "over\xc0\xaflong", "sur\xed\xa0\x80rogate", "cut\xe2\x82",
                          "big\xf4\x90\x80\x80"}) {
    GgufWriter w;
    w.SetUint32("ok", 1);
    w.SetUint32(bad, 1);
    EXPECT_THAT(ErrorOf(w.Serialize()), HasSubstr("gguf: key #1 at offset 42 is not valid UTF-8"))
        << absl::CHexEscape(bad);
  }
  GgufWriter w;
  w.SetUint32("caf\xc3\xa9.\xf0\x9f\x98\x80", 1);  // valid 2- and 4-byte sequences
  EXPECT_TRUE(GgufFile::FromBytes(w.Serialize()).ok());
}

TEST(GgufMalformed, EmptyKey) {
  GgufWriter w;
  w.SetUint32("", 1);
  EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: key #0 at offset 24 is empty");
}

// ---- Alignment ----

TEST(GgufMalformed, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u, 0x80000001u}) {
    GgufWriter w;
    w.SetUint32("general.alignment", a);
    EXPECT_EQ(ErrorOf(w.Serialize()), "gguf: general.alignment " + std::to_string(a) +
                                          " is not a power of two in [1, 2^31]");
  }
  GgufWriter too_big;
  too_big.SetUint64("general.alignment", uint64_t{1} << 32);
  EXPECT_THAT(ErrorOf(too_big.Serialize()), HasSubstr("4294967296 is not a power of two"));
  GgufWriter negative;
  negative.SetInt32("general.alignment", -32);
  EXPECT_THAT(ErrorOf(negative.Serialize()), HasSubstr("general.alignment -32 is not"));
  GgufWriter text;
  text.SetString("general.alignment", "32");
  EXPECT_EQ(ErrorOf(text.Serialize()),
            "gguf: general.alignment has type string, expected an integer");
  // Any integer width is fine.
  GgufWriter small;
  small.SetRaw("general.alignment", ValueType::kUint8, "\x10");
  small.AddTensor("t", kernels::DType::kF32, {4}, Bytes(16, 1));
  auto f = GgufFile::FromBytes(small.Serialize());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 16u);
}

TEST(GgufMalformed, MisalignedTensorOffset) {
  std::string bytes = testing::SmallModel();
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "blk.0.w").offset, 130);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: tensor 'blk.0.w': data offset 130 is not a multiple of the alignment 32");
}

// ---- Tensors ----

TEST(GgufMalformed, OverlappingTensors) {
  std::string bytes = testing::SmallModel();
  // "tok" spans [0, 128); move "norm" into it.
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "norm").offset, 96);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: tensors 'tok' [offset 0, 128 bytes) and 'norm' [offset 96, 32 bytes) overlap");
  // Two tensors at the same offset.
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "norm").offset, 128);
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("overlap"));
}

TEST(GgufMalformed, DuplicateTensorNames) {
  GgufWriter w;
  w.AddTensor("t.a", kernels::DType::kF32, {8}, Bytes(32, 1));
  w.AddTensor("t.b", kernels::DType::kF32, {8}, Bytes(32, 2));
  std::string bytes = w.Serialize();
  bytes[FindTensorInfo(bytes, "t.b").n_dims - 1] = 'a';
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("gguf: duplicate tensor 't.a' (tensor #1 at offset"));
}

TEST(GgufMalformed, UnknownTensorType) {
  for (uint32_t type : {4u, 5u, 31u, 1000u}) {
    std::string bytes = testing::SmallModel();
    Patch<uint32_t>(&bytes, FindTensorInfo(bytes, "norm").type, type);
    EXPECT_EQ(ErrorOf(bytes), "gguf: tensor 'norm': unknown tensor type " + std::to_string(type));
  }
}

TEST(GgufMalformed, InvalidUtf8InTensorName) {
  GgufWriter w;
  w.AddTensor("w\xfe", kernels::DType::kF32, {8}, Bytes(32, 1));
  EXPECT_THAT(ErrorOf(w.Serialize()),
              HasSubstr("name of tensor #0 at offset 24 is not valid UTF-8"));
}

TEST(GgufMalformed, ZeroAndNegativeDims) {
  std::string bytes = testing::SmallModel();
  const testing::TensorInfoFields tok = FindTensorInfo(bytes, "tok");
  std::string zero = bytes;
  Patch<uint64_t>(&zero, tok.dims + 8, 0);
  EXPECT_EQ(ErrorOf(zero), "gguf: tensor 'tok': dimension 1 is 0");
  std::string negative = bytes;
  Patch<int64_t>(&negative, tok.dims, -4);
  EXPECT_EQ(ErrorOf(negative), "gguf: tensor 'tok': dimension 0 is negative (-4)");
}

TEST(GgufMalformed, DimensionCount) {
  std::string bytes = testing::SmallModel();
  const size_t n_dims = FindTensorInfo(bytes, "tok").n_dims;
  for (uint32_t n : {0u, 5u, 0xffffffffu}) {
    Patch<uint32_t>(&bytes, n_dims, n);
    EXPECT_EQ(ErrorOf(bytes),
              "gguf: tensor 'tok': " + std::to_string(n) + " dimensions (supported: 1 to 4)");
  }
}

TEST(GgufMalformed, DimensionProductsThatOverflow) {
  std::string bytes = testing::SmallModel();
  const testing::TensorInfoFields tok = FindTensorInfo(bytes, "tok");  // f32, 2 dims
  // Elements: 2^32 * 2^32 overflows int64.
  Patch<uint64_t>(&bytes, tok.dims, uint64_t{1} << 32);
  Patch<uint64_t>(&bytes, tok.dims + 8, uint64_t{1} << 32);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: tensor 'tok': element count of shape [4294967296, 4294967296] overflows int64");
  // Elements fit (2^62) but bytes (4 each) do not.
  Patch<uint64_t>(&bytes, tok.dims, uint64_t{1} << 61);
  Patch<uint64_t>(&bytes, tok.dims + 8, 2);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: tensor 'tok': byte size of f32 shape [2305843009213693952, 2] overflows int64");
  // Bytes fit int64 but not the file.
  Patch<uint64_t>(&bytes, tok.dims, uint64_t{1} << 40);
  EXPECT_THAT(ErrorOf(bytes), HasSubstr("tensor 'tok': data [offset"));
}

TEST(GgufMalformed, RowLengthNotAWholeNumberOfBlocks) {
  std::string bytes = testing::SmallModel();
  Patch<uint64_t>(&bytes, FindTensorInfo(bytes, "blk.0.w").dims, 48);
  EXPECT_EQ(ErrorOf(bytes),
            "gguf: tensor 'blk.0.w': row length 48 is not a multiple of the q4_1 block size 32");
}

TEST(GgufMalformed, TensorCountOverLimit) {
  ReadLimits limits;
  limits.max_tensor_count = 2;
  EXPECT_EQ(ErrorOf(testing::SmallModel(), limits), "gguf: tensor count 3 exceeds the limit of 2");
  limits = ReadLimits();
  limits.max_dims = 1;
  EXPECT_EQ(ErrorOf(testing::SmallModel(), limits),
            "gguf: tensor 'tok': 2 dimensions (supported: 1 to 1)");
}

TEST(GgufMalformed, OpenNamesThePath) {
  std::string bytes = testing::SmallModel();
  Patch<uint32_t>(&bytes, 4, 9);
  const std::string path = TempPath("gguf_bad_version");
  FILE* fp = fopen(path.c_str(), "wb");
  ASSERT_NE(fp, nullptr);
  fwrite(bytes.data(), 1, bytes.size(), fp);
  fclose(fp);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  unlink(path.c_str());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(std::string(f.status().message()),
            "gguf: unsupported version 9 (supported: 2, 3) in '" + path + "'");
}

}  // namespace
}  // namespace pdserve::gguf
