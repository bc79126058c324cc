// safetensors round trips (every dtype with a safetensors spelling, scalars, zero-size
// tensors, metadata, awkward names), the exact header bytes of the Python library, zero-copy
// views, atomic writes and checkpoint folders (single file, shards + index, broken indexes).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>

#include "nibble/safetensors.h"
#include "test_support.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {

constexpr DType kFileDTypes[] = {DType::F64, DType::F32,  DType::F16, DType::BF16,    DType::I64,    DType::I32,
                                 DType::I16, DType::I8,   DType::U8,  DType::Bool,    DType::F8_E4M3, DType::F8_E5M2};

// A host tensor of random bytes (BOOL gets 0/1 so that it is a valid bool tensor).
Tensor random_tensor(const Shape& shape, DType dt, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = dt == DType::Bool ? uint8_t(rng() & 1) : uint8_t(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.nbytes() == cb.nbytes() && (ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0);
}

std::string header_of(const std::vector<uint8_t>& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[size_t(i)];
  return std::string(file.begin() + 8, file.begin() + 8 + std::ptrdiff_t(n));
}

// Options for a file without the {"format": "pt"} that transformers adds.
SaveOptions no_pt(std::map<std::string, std::string> metadata = {}) {
  SaveOptions o;
  o.metadata = std::move(metadata);
  o.format_pt = false;
  return o;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(Safetensors, RoundTripEveryDTypeAndShape) {
  uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  test::TempDir dir;
  const std::vector<Shape> shapes = {{}, {0}, {1}, {7}, {3, 5}, {2, 0, 4}, {2, 3, 4}, {1, 1, 1, 9}};
  for (DType dt : kFileDTypes) {
    std::map<std::string, Tensor> ts;
    for (size_t i = 0; i < shapes.size(); ++i) ts["t" + std::to_string(i)] = random_tensor(shapes[i], dt, rng);
    fs::path p = dir / (std::string(dtype_name(dt)) + ".safetensors");
    save_safetensors(p, ts);
    EXPECT_EQ(test::read_file(p), serialize_safetensors(ts)) << dtype_name(dt);
    SafetensorsFile f = SafetensorsFile::open(p);
    ASSERT_EQ(f.names().size(), ts.size());
    EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
    for (const auto& [name, t] : ts) {
      ASSERT_TRUE(f.contains(name));
      Tensor v = f.get(name);
      EXPECT_EQ(v.dtype(), dt);
      EXPECT_EQ(v.shape(), t.shape()) << name;
      EXPECT_TRUE(same_bytes(v, t)) << dtype_name(dt) << " " << name;
      EXPECT_EQ(f.info(name).end - f.info(name).begin, t.nbytes());
    }
  }
}

TEST(Safetensors, MixedDTypesAreLaidOutByAlignmentThenName) {
  std::mt19937_64 rng(1);
  std::map<std::string, Tensor> ts;
  for (DType dt : kFileDTypes) {
    ts[std::string("b_") + dtype_name(dt)] = random_tensor({3}, dt, rng);  // odd sizes: 3 elements
    ts[std::string("a_") + dtype_name(dt)] = random_tensor({5}, dt, rng);
  }
  auto bytes = serialize_safetensors(ts);
  SafetensorsHeader h = parse_safetensors_header(bytes.data(), bytes.size(), "mixed");
  std::vector<std::string> order;
  for (const auto& t : h.tensors) order.push_back(t.name);
  const std::vector<std::string> expect = {
      "a_i64", "b_i64", "a_f64", "b_f64", "a_f32", "b_f32", "a_i32", "b_i32", "a_bf16", "b_bf16", "a_f16", "b_f16",
      "a_i16", "b_i16", "a_f8_e4m3", "b_f8_e4m3", "a_f8_e5m2", "b_f8_e5m2", "a_i8", "b_i8", "a_u8", "b_u8",
      "a_bool", "b_bool"};
  EXPECT_EQ(order, expect);
  EXPECT_EQ(h.data_start % 8, 0u);
  // Descending alignment keeps every tensor's data aligned for its element type.
  for (const auto& t : h.tensors) EXPECT_EQ((h.data_start + t.begin) % size_t(dtype_bits(t.dtype) / 8), 0u) << t.name;
}

TEST(Safetensors, HeaderBytesMatchThePythonLibrary) {
  // These byte strings are what safetensors (Python/Rust) writes for the same input.
  Tensor a = Tensor::from_vector<float>({1, 2, 3}, DType::F32, {0, 1, 2, 3, 4, 5});
  auto out = serialize_safetensors({{"attn.0", a}}, no_pt());
  EXPECT_EQ(out[0], 64);
  EXPECT_EQ(header_of(out), R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})");
  EXPECT_EQ(out.size(), 8u + 64 + 24);

  out = serialize_safetensors({{"attn0", a.view({1, 1, 2, 3})}}, no_pt());
  EXPECT_EQ(header_of(out), R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       )");

  out = serialize_safetensors({}, no_pt());
  EXPECT_EQ(out, (std::vector<uint8_t>{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '}));
  out = serialize_safetensors({}, no_pt({{"framework", "pt"}}));
  EXPECT_EQ(header_of(out), R"({"__metadata__":{"framework":"pt"}}     )");

  out = serialize_safetensors({{"w", a}});
  EXPECT_EQ(header_of(out), R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}      )");
}

TEST(Safetensors, MetadataRoundTripAndFormatFirst) {
  test::TempDir dir;
  std::map<std::string, std::string> meta = {{"zeta", "last"}, {"alpha", "first \"quoted\" \\ é ✓"}, {"empty", ""}};
  Tensor t = Tensor::from_vector<int32_t>({2}, DType::I32, {1, -2});
  save_safetensors(dir / "m.safetensors", {{"x", t}}, {.metadata = meta});
  SafetensorsFile f = SafetensorsFile::open(dir / "m.safetensors");
  auto expect = meta;
  expect["format"] = "pt";
  EXPECT_EQ(f.metadata(), expect);
  std::string h = header_of(test::read_file(dir / "m.safetensors"));
  EXPECT_EQ(h.rfind(R"({"__metadata__":{"format":"pt","alpha":)", 0), 0u) << h;

  // A caller's own "format" replaces "pt".
  auto bytes = serialize_safetensors({}, {.metadata = {{"format", "np"}}});
  EXPECT_EQ(parse_safetensors_header(bytes.data(), bytes.size(), "m").metadata.at("format"), "np");
}

TEST(Safetensors, NamesAreEscapedAsSerdeJsonDoes) {
  const std::string odd = std::string("a\"b\\c\nd\te\x01") + "\x7f/é✓";
  Tensor t = Tensor::from_vector<uint8_t>({1}, DType::U8, {7});
  auto bytes = serialize_safetensors({{odd, t}}, no_pt());
  std::string h = header_of(bytes);
  EXPECT_NE(h.find("\"a\\\"b\\\\c\\nd\\te\\u0001\x7f/é✓\""), std::string::npos) << h;
  SafetensorsHeader parsed = parse_safetensors_header(bytes.data(), bytes.size(), "odd");
  ASSERT_EQ(parsed.tensors.size(), 1u);
  EXPECT_EQ(parsed.tensors[0].name, odd);
}

TEST(Safetensors, StridedInputIsWrittenContiguous) {
  Tensor m = Tensor::from_vector<float>({2, 3}, DType::F32, {1, 2, 3, 4, 5, 6});
  Tensor mt = m.transpose(0, 1);  // [3, 2], strided
  ASSERT_FALSE(mt.is_contiguous());
  auto bytes = serialize_safetensors({{"t", mt}, {"col", m.slice(1, 1, 2)}});
  test::TempDir dir;
  test::write_file(dir / "s.safetensors", bytes);
  SafetensorsFile f = SafetensorsFile::open(dir / "s.safetensors");
  Tensor v = f.get("t");
  EXPECT_EQ(v.shape(), (Shape{3, 2}));
  std::vector<float> got(6);
  std::memcpy(got.data(), v.data_ptr(), 24);
  EXPECT_EQ(got, (std::vector<float>{1, 4, 2, 5, 3, 6}));
  Tensor c = f.get("col");
  EXPECT_EQ(c.shape(), (Shape{2, 1}));
  std::memcpy(got.data(), c.data_ptr(), 8);
  EXPECT_EQ(got[0], 2.0f);
  EXPECT_EQ(got[1], 5.0f);
}

TEST(Safetensors, ViewsAreZeroCopyAndOutliveTheFile) {
  test::TempDir dir;
  Tensor a = Tensor::from_vector<float>({4}, DType::F32, {1, 2, 3, 4});
  save_safetensors(dir / "v.safetensors", {{"a", a}, {"b", a}});
  Tensor va, vb;
  size_t fsize = 0;
  {
    SafetensorsFile f = SafetensorsFile::open(dir / "v.safetensors");
    fsize = f.file_size();
    va = f.get("a");
    vb = f.get("b");
    EXPECT_EQ(va.storage(), vb.storage());  // one mapping, no copies
    EXPECT_EQ(va.storage()->nbytes(), fsize);
    EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b"}));
  }
  EXPECT_EQ(fsize, fs::file_size(dir / "v.safetensors"));
  fs::remove(dir / "v.safetensors");  // the mapping stays valid after unlink
  EXPECT_TRUE(same_bytes(va, a));
  EXPECT_TRUE(same_bytes(vb, a));
  EXPECT_EQ(vb.byte_offset(), va.byte_offset() + 16);
}

TEST(Safetensors, EmptyFileOfTensorsAndLookupErrors) {
  test::TempDir dir;
  save_safetensors(dir / "e.safetensors", {});
  SafetensorsFile f = SafetensorsFile::open(dir / "e.safetensors");
  EXPECT_TRUE(f.names().empty());
  EXPECT_FALSE(f.contains("x"));
  std::string msg = error_of([&] { f.info("x"); });
  EXPECT_NE(msg.find("e.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
  EXPECT_THROW(f.get("x"), FormatError);
  EXPECT_THROW(SafetensorsFile::open(dir / "missing.safetensors"), IoError);
  EXPECT_THROW(SafetensorsFile::open(dir.path()), IoError);  // a folder is not a file
}

TEST(Safetensors, WriterRejectsWhatSafetensorsCannotHold) {
  Tensor packed = Tensor::empty({8}, DType::NF4);
  std::string msg = error_of([&] { serialize_safetensors({{"w", packed}}); });
  EXPECT_NE(msg.find("nf4"), std::string::npos) << msg;
  EXPECT_THROW(serialize_safetensors({{"w", Tensor::empty({2}, DType::FP4)}}), FormatError);
  EXPECT_THROW(serialize_safetensors({{"w", Tensor()}}), FormatError);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", Tensor::zeros({1}, DType::U8)}}), FormatError);
  EXPECT_THROW(serialize_safetensors({{"bad\xff", Tensor::zeros({1}, DType::U8)}}), FormatError);
  test::TempDir dir;
  EXPECT_THROW(save_safetensors(dir / "p.safetensors", {{"w", packed}}), FormatError);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Safetensors, DeviceTensorsAreCopiedToTheHost) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  Tensor a = Tensor::from_vector<float>({3}, DType::F32, {1, 2, 3});
  auto bytes = serialize_safetensors({{"a", a.to(Device::cuda())}});
  EXPECT_EQ(bytes, serialize_safetensors({{"a", a}}));
}

// ---- atomic writes ------------------------------------------------------------------------

TEST(AtomicWrite, MissingFolderThrowsIoErrorAndLeavesNothing) {
  test::TempDir dir;
  fs::path p = dir / "no" / "such" / "x.bin";
  std::string msg = error_of([&] { write_file_atomic(p, "abc", 3); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_THROW(write_file_atomic(p, "abc", 3), IoError);
  EXPECT_THROW(save_safetensors(p, {}), IoError);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(AtomicWrite, OverwriteReplacesFullyAndLeavesNoTemporaries) {
  test::TempDir dir;
  fs::path p = dir / "x.bin";
  std::vector<uint8_t> big(100000, 0xab);
  write_file_atomic(p, big.data(), big.size());
  EXPECT_EQ(test::read_file(p), big);
  write_file_atomic(p, "short", 5);
  EXPECT_EQ(test::read_file(p), (std::vector<uint8_t>{'s', 'h', 'o', 'r', 't'}));
  write_file_atomic(p, nullptr, 0);
  EXPECT_EQ(fs::file_size(p), 0u);
  save_safetensors(p, {{"a", Tensor::zeros({3}, DType::F16)}});
  EXPECT_EQ(SafetensorsFile::open(p).names().size(), 1u);
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "x.bin");
  }
  EXPECT_EQ(entries, 1u);
}

TEST(AtomicWrite, FailedRenameRemovesTheTemporary) {
  test::TempDir dir;
  fs::create_directories(dir / "target" / "child");  // rename(file, non-empty folder) fails
  EXPECT_THROW(write_file_atomic(dir / "target", "abc", 3), IoError);
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "target");
  }
  EXPECT_EQ(entries, 1u);
  EXPECT_THROW(write_file_atomic(dir.path() / "", "abc", 3), IoError);  // names no file
}

TEST(AtomicWrite, ReadOnlyFolderThrowsIoError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  test::TempDir dir;
  fs::create_directories(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THROW(write_file_atomic(dir / "ro" / "x", "a", 1), IoError);
  fs::permissions(dir / "ro", fs::perms::owner_all);
  EXPECT_TRUE(fs::is_empty(dir / "ro"));
}

// ---- checkpoints ----------------------------------------------------------------------------

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

// Two shards + index, as transformers writes a sharded checkpoint.
void write_sharded(const fs::path& dir) {
  Tensor a = Tensor::from_vector<float>({2}, DType::F32, {1, 2});
  Tensor b = Tensor::from_vector<int64_t>({1}, DType::I64, {42});
  Tensor c = Tensor::from_vector<uint16_t>({3}, DType::BF16, {1, 2, 3});
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", a}, {"b", b}}, {.metadata = {{"k", "v"}}});
  save_safetensors(dir / "model-00002-of-00002.safetensors", {{"c", c}});
  write_text(dir / "model.safetensors.index.json",
             R"({"metadata": {"total_size": 30}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                 "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
}

}  // namespace

TEST(Checkpoint, SingleFile) {
  test::TempDir dir;
  save_safetensors(dir / "model.safetensors", {{"w", Tensor::zeros({2, 2}, DType::F32)}, {"b", Tensor::zeros({2}, DType::F32)}});
  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"b", "w"}));
  EXPECT_EQ(c.get("w").shape(), (Shape{2, 2}));
  EXPECT_EQ(c.info("b").dtype, DType::F32);
  EXPECT_EQ(c.metadata().at("format"), "pt");
  EXPECT_EQ(c.files().size(), 1u);
  std::string msg = error_of([&] { c.get("nope"); });
  EXPECT_NE(msg.find("'nope'"), std::string::npos) << msg;
}

TEST(Checkpoint, ShardedWithIndex) {
  test::TempDir dir;
  write_sharded(dir.path());
  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.metadata().at("k"), "v");  // the first shard's
  EXPECT_EQ(*c.get("b").data<int64_t>(), 42);
  EXPECT_EQ(c.get("c").dtype(), DType::BF16);
  EXPECT_TRUE(c.contains("a"));
  EXPECT_FALSE(c.contains("z"));
}

TEST(Checkpoint, Errors) {
  {  // neither file: IoError naming the folder
    test::TempDir dir;
    std::string msg = error_of([&] { Checkpoint::open(dir.path()); });
    EXPECT_NE(msg.find(dir.path().string()), std::string::npos) << msg;
    EXPECT_THROW(Checkpoint::open(dir.path()), IoError);
    EXPECT_THROW(Checkpoint::open(dir / "absent"), IoError);
  }
  auto expect_index_error = [](const std::string& index_json, const std::string& what,
                               const std::function<void(const fs::path&)>& tweak = {}) {
    test::TempDir dir;
    write_sharded(dir.path());
    write_text(dir / "model.safetensors.index.json", index_json);
    if (tweak) tweak(dir.path());
    std::string msg = error_of([&] { Checkpoint::open(dir.path()); });
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_THROW(Checkpoint::open(dir.path()), FormatError);
  };
  expect_index_error("{not json", "not valid JSON");
  expect_index_error("[1, 2]", "not a JSON object");
  expect_index_error(R"({"metadata": {}})", "weight_map");
  expect_index_error(R"({"weight_map": {"a": 3}})", "'a'");
  expect_index_error(R"({"weight_map": {"a": "model-00003-of-00002.safetensors"}})", "does not exist");
  expect_index_error(R"({"weight_map": {"zz": "model-00001-of-00002.safetensors"}})", "tensor 'zz'");
  expect_index_error(R"({"weight_map": {"a": "../outside.safetensors"}})", "escapes");
  expect_index_error(R"({"weight_map": {"a": "/etc/passwd"}})", "escapes");
  expect_index_error(R"({"weight_map": {"a": "sub/../../x.safetensors"}})", "escapes");
  // The same tensor in two shards.
  expect_index_error(R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})",
                     "both", [](const fs::path& d) {
                       save_safetensors(d / "model-00002-of-00002.safetensors",
                                        {{"a", Tensor::zeros({1}, DType::F32)}, {"c", Tensor::zeros({1}, DType::F32)}});
                     });
  // A malformed shard surfaces its own FormatError naming the shard.
  {
    test::TempDir dir;
    write_sharded(dir.path());
    write_text(dir / "model-00002-of-00002.safetensors", "garbage");
    std::string msg = error_of([&] { Checkpoint::open(dir.path()); });
    EXPECT_NE(msg.find("model-00002-of-00002.safetensors"), std::string::npos) << msg;
  }
}
