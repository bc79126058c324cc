// Every safetensors file in the shared fixtures and models (written by the Python library via
// transformers, bitsandbytes and peft) opens and every tensor can be viewed; re-serializing
// its tensors through our writer reproduces the file byte for byte.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "nibble/safetensors.h"
#include "test_support.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {

// The .safetensors files under ../shared/fixtures and ../shared/models today: a missing,
// renamed or added one fails the loops below instead of changing what they check.
constexpr size_t kFixtureFiles = 40;

std::vector<fs::path> all_safetensors_files() {
  std::vector<fs::path> out;
  for (const fs::path& root : {test::fixtures_root(), test::shared_root() / "models"}) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    for (const auto& e :
         fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec))
      if (e.is_regular_file() && e.path().extension() == ".safetensors") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string rel(const fs::path& p) {
  return p.lexically_relative(test::shared_root()).string();
}

}  // namespace

TEST(SafetensorsFixtures, EveryFileParsesAndEveryTensorIsViewable) {
  NIBBLE_SKIP_WITHOUT_FIXTURE(test::fixtures_root());
  auto files = all_safetensors_files();
  ASSERT_EQ(files.size(), kFixtureFiles) << "safetensors files under " << test::shared_root();
  size_t tensors = 0;
  for (const fs::path& p : files) {
    SCOPED_TRACE(rel(p));
    SafetensorsFile f = SafetensorsFile::open(p);
    EXPECT_EQ(f.file_size(), fs::file_size(p));
    uint64_t expect_begin = 0;
    for (const std::string& name : f.names()) {
      const TensorInfo& info = f.info(name);
      EXPECT_EQ(info.begin, expect_begin) << name;  // names() is in offset order
      expect_begin = info.end;
      Tensor t = f.get(name);
      EXPECT_EQ(t.shape(), info.shape);
      EXPECT_EQ(t.nbytes(), info.end - info.begin);
      // Touch every byte of the view: the mapping really covers it.
      uint64_t sum = 0;
      for (uint8_t b : t.bytes()) sum += b;
      (void)sum;
      ++tensors;
    }
  }
  RecordProperty("files", int(files.size()));
  RecordProperty("tensors", int(tensors));
  EXPECT_GT(tensors, 0u);
}

// The writer reproduces files written by the Python library. A file's metadata is passed
// back as it was; the one thing we cannot reproduce is the order of several metadata keys
// (the Rust library writes a HashMap's random order), so such files are compared as parsed
// headers plus identical data, everything else byte for byte.
TEST(SafetensorsFixtures, ReserializationIsByteIdentical) {
  NIBBLE_SKIP_WITHOUT_FIXTURE(test::fixtures_root());
  auto files = all_safetensors_files();
  ASSERT_EQ(files.size(), kFixtureFiles) << "safetensors files under " << test::shared_root();
  size_t identical = 0, anchors = 0, anchors_identical = 0;
  for (const fs::path& p : files) {
    SCOPED_TRACE(rel(p));
    SafetensorsFile f = SafetensorsFile::open(p);
    std::map<std::string, Tensor> tensors;
    for (const std::string& name : f.names()) tensors[name] = f.get(name);
    SaveOptions opts;
    opts.metadata = f.metadata();
    opts.format_pt = f.metadata().count("format") > 0;  // files without metadata stay without
    std::vector<uint8_t> ours = serialize_safetensors(tensors, opts);
    std::vector<uint8_t> theirs = test::read_file(p);

    std::string parent = p.parent_path().filename().string();
    bool anchor = p.filename() == "model.safetensors" && (parent == "fp32" || parent == "nf4_dq");
    anchors += anchor;
    if (ours == theirs) {
      ++identical;
      anchors_identical += anchor;
      continue;
    }
    EXPECT_GT(f.metadata().size(), 1u) << "re-serialized bytes differ";
    ASSERT_EQ(ours.size(), theirs.size());
    SafetensorsHeader a = parse_safetensors_header(ours.data(), ours.size(), "ours");
    SafetensorsHeader b = parse_safetensors_header(theirs.data(), theirs.size(), rel(p));
    EXPECT_EQ(a.metadata, b.metadata);
    EXPECT_EQ(a.data_start, b.data_start);
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
      EXPECT_EQ(a.tensors[i].begin, b.tensors[i].begin);
      EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
    }
    EXPECT_TRUE(std::equal(ours.begin() + std::ptrdiff_t(a.data_start), ours.end(),
                           theirs.begin() + std::ptrdiff_t(b.data_start)))
        << "data sections differ";
  }
  RecordProperty("byte_identical", int(identical));
  // Every model's fp32 and nf4_dq checkpoint (written by transformers' save_pretrained) must
  // be among the byte-identical ones.
  EXPECT_GE(anchors, 14u);
  EXPECT_EQ(anchors_identical, anchors);
}
