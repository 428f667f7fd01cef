#include "engine/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace pdserve::gguf {

// Scalars are copied straight out of the file, and GGUF v2/v3 files (the
// ones we accept) are little-endian.
static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
// FromBytes copies get the alignment an mmap would give tensor data.
constexpr std::align_val_t kBufferAlignment{64};
// Smallest encodings, used only to bound reservations by the bytes left:
// key-value = key length (8) + type (4) + one byte; tensor info = name length
// (8) + n_dims (4) + one dim (8) + type (4) + offset (8); string = length (8).
constexpr uint64_t kMinKvBytes = 13;
constexpr uint64_t kMinTensorInfoBytes = 32;
constexpr uint64_t kMinStringBytes = 8;

absl::Status Error(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// A key or name as it may appear in a message: escaped and bounded.
std::string Printable(std::string_view s) {
  constexpr size_t kMax = 96;
  std::string out = absl::CHexEscape(absl::string_view(s.data(), std::min(s.size(), kMax)));
  if (s.size() > kMax) absl::StrAppend(&out, "...");
  return out;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned cc = p[i + k];
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

bool IsKnownValueType(uint32_t id) { return id <= static_cast<uint32_t>(ValueType::kFloat64); }

bool IsIntegerType(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

bool IsNumericType(ValueType t) {
  return IsIntegerType(t) || t == ValueType::kFloat32 || t == ValueType::kFloat64;
}

// Bytes of one scalar; 0 for string and array.
uint64_t ScalarBytes(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return 0;
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string ShapeString(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Reads little-endian fields; every read is bounds-checked first.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size) : base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return base_ + pos_; }

  // `describe()` names what is being read; it runs only on error.
  template <typename Describe>
  absl::Status Need(uint64_t n, const Describe& describe) const {
    if (n <= remaining()) return absl::OkStatus();
    return Error(
        absl::StrFormat("gguf: truncated at byte %d while reading %s (%d bytes at offset %d)",
                        size_, describe(), n, pos_));
  }
  template <typename T, typename Describe>
  absl::Status Read(T* out, const Describe& describe) {
    PDS_RETURN_IF_ERROR(Need(sizeof(T), describe));
    *out = Load<T>(here());
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  // Only after Need(n) succeeded.
  void Skip(uint64_t n) { pos_ += n; }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

template <typename Describe>
absl::StatusOr<std::string_view> ReadString(Cursor& c, uint64_t max_bytes,
                                            const Describe& describe) {
  const uint64_t at = c.pos();
  uint64_t len;
  PDS_RETURN_IF_ERROR(c.Read(&len, [&] { return absl::StrCat("length of ", describe()); }));
  if (len > max_bytes) {
    return Error(absl::StrFormat("gguf: %s: string length %d at offset %d exceeds the limit of %d",
                                 describe(), len, at, max_bytes));
  }
  PDS_RETURN_IF_ERROR(c.Need(len, describe));
  std::string_view s(reinterpret_cast<const char*>(c.here()), len);
  c.Skip(len);
  return s;
}

}  // namespace

// The parser's access to Value's fields.
class ValueAccess {
 public:
  // Decodes one scalar of type `t` at `p` (ScalarBytes(t) readable bytes).
  static void Decode(ValueType t, const uint8_t* p, Value* v) {
    v->type_ = t;
    switch (t) {
      case ValueType::kUint8:
      case ValueType::kBool:
        SetUnsigned(Load<uint8_t>(p), v);
        break;
      case ValueType::kUint16:
        SetUnsigned(Load<uint16_t>(p), v);
        break;
      case ValueType::kUint32:
        SetUnsigned(Load<uint32_t>(p), v);
        break;
      case ValueType::kUint64:
        SetUnsigned(Load<uint64_t>(p), v);
        break;
      case ValueType::kInt8:
        SetSigned(Load<int8_t>(p), v);
        break;
      case ValueType::kInt16:
        SetSigned(Load<int16_t>(p), v);
        break;
      case ValueType::kInt32:
        SetSigned(Load<int32_t>(p), v);
        break;
      case ValueType::kInt64:
        SetSigned(Load<int64_t>(p), v);
        break;
      case ValueType::kFloat32:
        v->f64_ = Load<float>(p);
        break;
      case ValueType::kFloat64:
        v->f64_ = Load<double>(p);
        break;
      case ValueType::kString:
      case ValueType::kArray:
        break;
    }
  }

  // Element i of a non-string array, decoded as a scalar.
  static std::optional<Value> Element(const Value& array, uint64_t i) {
    if (array.type_ != ValueType::kArray || i >= array.array_size_ ||
        array.array_type_ == ValueType::kString) {
      return std::nullopt;
    }
    Value v;
    Decode(array.array_type_, array.array_data_ + i * ScalarBytes(array.array_type_), &v);
    return v;
  }

  // Reads a value whose type id (known, already read) is `type`.
  template <typename Describe>
  static absl::Status Read(Cursor& c, const ReadLimits& limits, ValueType type, Value* v,
                           const Describe& where) {
    v->type_ = type;
    if (type == ValueType::kString) {
      PDS_ASSIGN_OR_RETURN(v->str_, ReadString(c, limits.max_string_bytes, where));
      return absl::OkStatus();
    }
    if (type != ValueType::kArray) {
      PDS_RETURN_IF_ERROR(c.Need(ScalarBytes(type), where));
      PDS_RETURN_IF_ERROR(CheckBool(type, c.here(), where, -1));
      Decode(type, c.here(), v);
      c.Skip(ScalarBytes(type));
      return absl::OkStatus();
    }
    uint32_t elem_id;
    PDS_RETURN_IF_ERROR(
        c.Read(&elem_id, [&] { return absl::StrCat("array element type of ", where()); }));
    if (elem_id == static_cast<uint32_t>(ValueType::kArray)) {
      return Error(absl::StrFormat("gguf: %s: nested arrays are not supported", where()));
    }
    if (!IsKnownValueType(elem_id)) {
      return Error(absl::StrFormat("gguf: %s: unknown array element type %d", where(), elem_id));
    }
    const auto elem = static_cast<ValueType>(elem_id);
    uint64_t count;
    PDS_RETURN_IF_ERROR(c.Read(&count, [&] { return absl::StrCat("array length of ", where()); }));
    if (count > limits.max_array_elements) {
      return Error(absl::StrFormat("gguf: %s: array of %d elements exceeds the limit of %d",
                                   where(), count, limits.max_array_elements));
    }
    v->array_type_ = elem;
    v->array_size_ = count;
    if (elem == ValueType::kString) {
      v->strings_.reserve(std::min(count, c.remaining() / kMinStringBytes));
      for (uint64_t i = 0; i < count; ++i) {
        PDS_ASSIGN_OR_RETURN(std::string_view s, ReadString(c, limits.max_string_bytes, [&] {
                               return absl::StrFormat("element #%d of %s", i, where());
                             }));
        v->strings_.push_back(s);
      }
      return absl::OkStatus();
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(count, ScalarBytes(elem), &bytes)) {
      return Error(absl::StrFormat("gguf: %s: array of %d %s elements overflows uint64", where(),
                                   count, ValueTypeName(elem)));
    }
    PDS_RETURN_IF_ERROR(c.Need(bytes, [&] {
      return absl::StrFormat("%d %s elements of %s", count, ValueTypeName(elem), where());
    }));
    v->array_data_ = c.here();
    if (elem == ValueType::kBool) {
      for (uint64_t i = 0; i < count; ++i) {
        PDS_RETURN_IF_ERROR(CheckBool(elem, c.here() + i, where, static_cast<int64_t>(i)));
      }
    }
    c.Skip(bytes);
    return absl::OkStatus();
  }

 private:
  static void SetUnsigned(uint64_t u, Value* v) {
    v->u64_ = u;
    v->i64_ = static_cast<int64_t>(u);
    v->is_signed_ = false;
  }
  static void SetSigned(int64_t i, Value* v) {
    v->i64_ = i;
    v->u64_ = static_cast<uint64_t>(i);
    v->is_signed_ = true;
  }
  // `element` < 0 for a scalar.
  template <typename Describe>
  static absl::Status CheckBool(ValueType t, const uint8_t* p, const Describe& where,
                                int64_t element) {
    if (t != ValueType::kBool || *p <= 1) return absl::OkStatus();
    return Error(absl::StrFormat("gguf: %s%s: bool value %d is neither 0 nor 1", where(),
                                 element < 0 ? "" : absl::StrFormat(" element #%d", element), *p));
  }
};

const char* ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// ---- Value ----

bool Value::is_integer() const { return IsIntegerType(type_); }

std::optional<uint64_t> Value::AsUint() const {
  if (!is_integer() || (is_signed_ && i64_ < 0)) return std::nullopt;
  return u64_;
}

std::optional<int64_t> Value::AsInt() const {
  if (!is_integer() || (!is_signed_ && u64_ > uint64_t{std::numeric_limits<int64_t>::max()})) {
    return std::nullopt;
  }
  return i64_;
}

std::optional<double> Value::AsDouble() const {
  if (is_float()) return f64_;
  if (is_integer()) return is_signed_ ? static_cast<double>(i64_) : static_cast<double>(u64_);
  return std::nullopt;
}

std::optional<bool> Value::AsBool() const {
  if (type_ != ValueType::kBool) return std::nullopt;
  return u64_ != 0;
}

std::optional<std::string_view> Value::AsString() const {
  if (type_ != ValueType::kString) return std::nullopt;
  return str_;
}

std::optional<uint64_t> Value::ArrayUintAt(uint64_t i) const {
  std::optional<Value> e = ValueAccess::Element(*this, i);
  return e ? e->AsUint() : std::nullopt;
}

std::optional<int64_t> Value::ArrayIntAt(uint64_t i) const {
  std::optional<Value> e = ValueAccess::Element(*this, i);
  return e ? e->AsInt() : std::nullopt;
}

std::optional<double> Value::ArrayDoubleAt(uint64_t i) const {
  std::optional<Value> e = ValueAccess::Element(*this, i);
  return e ? e->AsDouble() : std::nullopt;
}

std::optional<bool> Value::ArrayBoolAt(uint64_t i) const {
  std::optional<Value> e = ValueAccess::Element(*this, i);
  return e ? e->AsBool() : std::nullopt;
}

// ---- GgufFile: loading ----

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
  if (owned_bytes_ != nullptr) ::operator delete(owned_bytes_, kBufferAlignment);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path,
                                                         const ReadLimits& limits) {
  // O_NONBLOCK so that a FIFO cannot hang us; it changes nothing for files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("gguf: cannot open '%s'", path));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrFormat("gguf: cannot stat '%s'", path));
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return absl::ErrnoToStatus(EISDIR, absl::StrFormat("gguf: cannot open '%s'", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return Error(absl::StrFormat("gguf: cannot open '%s': not a regular file", path));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* mapping = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      const int err = errno;
      close(fd);
      return absl::ErrnoToStatus(
          err, absl::StrFormat("gguf: cannot map '%s' (%d bytes)", path, file->size_));
    }
    file->mapping_ = mapping;
    file->base_ = static_cast<const uint8_t*>(mapping);
  }
  close(fd);
  if (absl::Status s = file->Parse(limits); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " in '", path, "'"));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::string_view bytes,
                                                              const ReadLimits& limits) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = "<memory>";
  file->size_ = bytes.size();
  file->owned_bytes_ =
      static_cast<uint8_t*>(::operator new(std::max<size_t>(bytes.size(), 1), kBufferAlignment));
  if (!bytes.empty()) std::memcpy(file->owned_bytes_, bytes.data(), bytes.size());
  file->base_ = file->owned_bytes_;
  PDS_RETURN_IF_ERROR(file->Parse(limits));
  return file;
}

absl::Status GgufFile::Parse(const ReadLimits& limits) {
  Cursor c(base_, size_);

  // Header: magic, version, counts.
  PDS_RETURN_IF_ERROR(c.Need(4, [] { return std::string("magic"); }));
  if (std::memcmp(c.here(), kMagic, 4) != 0) {
    const uint8_t* m = c.here();
    return Error(absl::StrFormat("gguf: bad magic 0x%02x%02x%02x%02x (not a GGUF file)", m[0], m[1],
                                 m[2], m[3]));
  }
  c.Skip(4);
  PDS_RETURN_IF_ERROR(c.Read(&version_, [] { return std::string("version"); }));
  if (version_ != 2 && version_ != 3) {
    // A big-endian file stores the version byte-swapped; the magic is bytes.
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) {
      return Error(absl::StrFormat(
          "gguf: big-endian GGUF file (version %d) is not supported; convert it to little-endian",
          swapped));
    }
    return Error(absl::StrFormat("gguf: unsupported version %d (supported: 2, 3)", version_));
  }
  uint64_t n_tensors;
  uint64_t n_kv;
  PDS_RETURN_IF_ERROR(c.Read(&n_tensors, [] { return std::string("tensor count"); }));
  PDS_RETURN_IF_ERROR(c.Read(&n_kv, [] { return std::string("metadata count"); }));
  if (n_tensors > limits.max_tensor_count) {
    return Error(absl::StrFormat("gguf: tensor count %d exceeds the limit of %d", n_tensors,
                                 limits.max_tensor_count));
  }
  if (n_kv > limits.max_kv_count) {
    return Error(absl::StrFormat("gguf: metadata count %d exceeds the limit of %d", n_kv,
                                 limits.max_kv_count));
  }

  // Metadata.
  metadata_.reserve(std::min(n_kv, c.remaining() / kMinKvBytes));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t at = c.pos();
    PDS_ASSIGN_OR_RETURN(std::string_view key, ReadString(c, limits.max_string_bytes, [i] {
                           return absl::StrFormat("key #%d", i);
                         }));
    if (key.empty()) return Error(absl::StrFormat("gguf: key #%d at offset %d is empty", i, at));
    if (!IsValidUtf8(key)) {
      return Error(absl::StrFormat("gguf: key #%d at offset %d is not valid UTF-8: \"%s\"", i, at,
                                   Printable(key)));
    }
    auto where = [&key] { return absl::StrCat("key '", Printable(key), "'"); };
    uint32_t type_id;
    PDS_RETURN_IF_ERROR(c.Read(&type_id, [&] { return absl::StrCat("value type of ", where()); }));
    if (!IsKnownValueType(type_id)) {
      return Error(absl::StrFormat("gguf: %s: unknown value type %d", where(), type_id));
    }
    Metadatum m{key, Value()};
    PDS_RETURN_IF_ERROR(
        ValueAccess::Read(c, limits, static_cast<ValueType>(type_id), &m.value, where));
    auto [it, inserted] = metadata_index_.emplace(key, metadata_.size());
    if (!inserted) {
      return Error(absl::StrFormat("gguf: duplicate %s (key #%d at offset %d; first was key #%d)",
                                   where(), i, at, it->second));
    }
    metadata_.push_back(std::move(m));
  }

  alignment_ = kDefaultAlignment;
  if (const Value* a = Find("general.alignment"); a != nullptr) {
    if (!a->is_integer()) {
      return Error(absl::StrFormat("gguf: general.alignment has type %s, expected an integer",
                                   ValueTypeName(a->type())));
    }
    const std::optional<uint64_t> v = a->AsUint();
    if (!v || *v == 0 || *v > std::numeric_limits<uint32_t>::max() || !std::has_single_bit(*v)) {
      return Error(absl::StrFormat("gguf: general.alignment %s is not a power of two in [1, 2^31]",
                                   v ? absl::StrCat(*v) : absl::StrCat(*a->AsInt())));
    }
    alignment_ = *v;
  }

  // Tensor infos.
  tensors_.reserve(std::min(n_tensors, c.remaining() / kMinTensorInfoBytes));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint64_t at = c.pos();
    TensorInfo t;
    PDS_ASSIGN_OR_RETURN(t.name, ReadString(c, limits.max_string_bytes, [i] {
                           return absl::StrFormat("name of tensor #%d", i);
                         }));
    if (t.name.empty()) {
      return Error(absl::StrFormat("gguf: tensor #%d at offset %d has an empty name", i, at));
    }
    if (!IsValidUtf8(t.name)) {
      return Error(
          absl::StrFormat("gguf: name of tensor #%d at offset %d is not valid UTF-8: \"%s\"", i, at,
                          Printable(t.name)));
    }
    auto where = [&t] { return absl::StrCat("tensor '", Printable(t.name), "'"); };
    uint32_t n_dims;
    PDS_RETURN_IF_ERROR(
        c.Read(&n_dims, [&] { return absl::StrCat("dimension count of ", where()); }));
    if (n_dims == 0 || n_dims > limits.max_dims) {
      return Error(absl::StrFormat("gguf: %s: %d dimensions (supported: 1 to %d)", where(), n_dims,
                                   limits.max_dims));
    }
    t.dims.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne;
      PDS_RETURN_IF_ERROR(
          c.Read(&ne, [&] { return absl::StrFormat("dimension %d of %s", d, where()); }));
      if (ne == 0) return Error(absl::StrFormat("gguf: %s: dimension %d is 0", where(), d));
      if (ne > uint64_t{std::numeric_limits<int64_t>::max()}) {
        return Error(absl::StrFormat("gguf: %s: dimension %d is negative (%d)", where(), d,
                                     static_cast<int64_t>(ne)));
      }
      t.dims[d] = static_cast<int64_t>(ne);
    }
    t.n_elements = 1;
    for (int64_t ne : t.dims) {
      if (__builtin_mul_overflow(t.n_elements, ne, &t.n_elements)) {
        return Error(absl::StrFormat("gguf: %s: element count of shape %s overflows int64", where(),
                                     ShapeString(t.dims)));
      }
    }
    uint32_t type_id;
    PDS_RETURN_IF_ERROR(c.Read(&type_id, [&] { return absl::StrCat("type of ", where()); }));
    const kernels::DTypeInfo* info = kernels::FindDType(type_id);
    if (info == nullptr) {
      return Error(absl::StrFormat("gguf: %s: unknown tensor type %d", where(), type_id));
    }
    t.type = info->type;
    if (t.dims[0] % info->block_size != 0) {
      return Error(
          absl::StrFormat("gguf: %s: row length %d is not a multiple of the %s block size %d",
                          where(), t.dims[0], info->name, info->block_size));
    }
    t.n_bytes = t.dims[0] / info->block_size;
    bool overflow = __builtin_mul_overflow(t.n_bytes, info->type_size, &t.n_bytes);
    for (uint32_t d = 1; d < n_dims && !overflow; ++d) {
      overflow = __builtin_mul_overflow(t.n_bytes, t.dims[d], &t.n_bytes);
    }
    if (overflow) {
      return Error(absl::StrFormat("gguf: %s: byte size of %s shape %s overflows int64", where(),
                                   info->name, ShapeString(t.dims)));
    }
    PDS_RETURN_IF_ERROR(
        c.Read(&t.offset, [&] { return absl::StrCat("data offset of ", where()); }));
    if (t.offset % alignment_ != 0) {
      return Error(absl::StrFormat("gguf: %s: data offset %d is not a multiple of the alignment %d",
                                   where(), t.offset, alignment_));
    }
    auto [it, inserted] = tensor_index_.emplace(t.name, tensors_.size());
    if (!inserted) {
      return Error(
          absl::StrFormat("gguf: duplicate %s (tensor #%d at offset %d; first was tensor #%d)",
                          where(), i, at, it->second));
    }
    tensors_.push_back(std::move(t));
  }

  // Data section: starts at the next multiple of the alignment. A file
  // without tensors may end before it.
  const uint64_t end_of_infos = c.pos();
  if (__builtin_add_overflow(end_of_infos, alignment_ - 1, &data_offset_)) {
    return Error(
        absl::StrFormat("gguf: data section offset overflows (header ends at %d)", end_of_infos));
  }
  data_offset_ &= ~(alignment_ - 1);
  for (TensorInfo& t : tensors_) {
    uint64_t start;
    uint64_t end;
    if (__builtin_add_overflow(data_offset_, t.offset, &start)) {
      return Error(absl::StrFormat(
          "gguf: tensor '%s': data offset %d past the data section at %d overflows uint64",
          Printable(t.name), t.offset, data_offset_));
    }
    if (__builtin_add_overflow(start, static_cast<uint64_t>(t.n_bytes), &end) || end > size_) {
      return Error(absl::StrFormat(
          "gguf: tensor '%s': data [offset %d, %d bytes) extends past end of file (size %d)",
          Printable(t.name), start, t.n_bytes, size_));
    }
    t.data = base_ + start;
  }

  // No two tensors may share bytes.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const TensorInfo& a = *by_offset[k - 1];
    const TensorInfo& b = *by_offset[k];
    if (b.offset < a.offset + static_cast<uint64_t>(a.n_bytes)) {
      return Error(absl::StrFormat(
          "gguf: tensors '%s' [offset %d, %d bytes) and '%s' [offset %d, %d bytes) overlap",
          Printable(a.name), a.offset, a.n_bytes, Printable(b.name), b.offset, b.n_bytes));
    }
  }
  return absl::OkStatus();
}

// ---- GgufFile: lookups ----

namespace {

std::string TypeName(const Value& v) {
  if (v.type() == ValueType::kArray) {
    return absl::StrCat("array of ", ValueTypeName(v.array_type()));
  }
  return ValueTypeName(v.type());
}

absl::Status KeyNotFound(std::string_view key) {
  return absl::NotFoundError(absl::StrFormat("gguf: key '%s' not found", Printable(key)));
}

absl::Status WrongType(std::string_view key, const Value& v, const char* expected) {
  return Error(absl::StrFormat("gguf: key '%s' has type %s, expected %s", Printable(key),
                               TypeName(v), expected));
}

}  // namespace

const Value* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].value;
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  std::optional<std::string_view> s = v->AsString();
  if (!s) return WrongType(key, *v, "string");
  return *s;
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  if (!v->is_integer()) return WrongType(key, *v, "an unsigned integer");
  std::optional<uint64_t> u = v->AsUint();
  if (!u) {
    return Error(absl::StrFormat("gguf: key '%s' is %d, expected an unsigned integer",
                                 Printable(key), *v->AsInt()));
  }
  return *u;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  if (!v->is_integer()) return WrongType(key, *v, "an integer");
  std::optional<int64_t> i = v->AsInt();
  if (!i) {
    return Error(absl::StrFormat("gguf: key '%s' is %d, which does not fit int64", Printable(key),
                                 *v->AsUint()));
  }
  return *i;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  std::optional<double> d = v->AsDouble();
  if (!d) return WrongType(key, *v, "a number");
  return *d;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  std::optional<bool> b = v->AsBool();
  if (!b) return WrongType(key, *v, "bool");
  return *b;
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  if (v->type() != ValueType::kArray || v->array_type() != ValueType::kString) {
    return WrongType(key, *v, "array of string");
  }
  return v->array_strings();
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  if (v->type() != ValueType::kArray || !IsIntegerType(v->array_type())) {
    return WrongType(key, *v, "array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->array_size());
  for (uint64_t i = 0; i < v->array_size(); ++i) {
    std::optional<int64_t> e = v->ArrayIntAt(i);
    if (!e) {
      return Error(absl::StrFormat("gguf: key '%s' element #%d is %d, which does not fit int64",
                                   Printable(key), i, *v->ArrayUintAt(i)));
    }
    out.push_back(*e);
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyNotFound(key);
  if (v->type() != ValueType::kArray || !IsNumericType(v->array_type())) {
    return WrongType(key, *v, "array of numbers");
  }
  std::vector<float> out;
  out.reserve(v->array_size());
  for (uint64_t i = 0; i < v->array_size(); ++i) {
    out.push_back(static_cast<float>(*v->ArrayDoubleAt(i)));
  }
  return out;
}

absl::StatusOr<std::string_view> GgufFile::GetStringOr(std::string_view key,
                                                       std::string_view def) const {
  return Has(key) ? GetString(key) : def;
}

absl::StatusOr<uint64_t> GgufFile::GetUintOr(std::string_view key, uint64_t def) const {
  return Has(key) ? GetUint(key) : def;
}

absl::StatusOr<double> GgufFile::GetFloatOr(std::string_view key, double def) const {
  return Has(key) ? GetFloat(key) : def;
}

absl::StatusOr<bool> GgufFile::GetBoolOr(std::string_view key, bool def) const {
  return Has(key) ? GetBool(key) : def;
}

}  // namespace pdserve::gguf
