// Malformed safetensors files, generated here: each must be rejected by open() with a
// FormatError whose one-line message names the file and says what is wrong. Then sweeps:
// every truncation of a valid file, and random byte corruption, must never crash or throw
// anything but FormatError.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <optional>

#include "nibble/safetensors.h"
#include "test_support.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;

// 8-byte length n (default: the header's own length), the header text, then data_len bytes.
Bytes raw(const std::string& header, size_t data_len, std::optional<uint64_t> n = std::nullopt) {
  uint64_t len = n.value_or(header.size());
  Bytes b(8 + header.size() + data_len);
  for (size_t i = 0; i < 8; ++i) b[i] = uint8_t(len >> (8 * i));
  for (size_t i = 0; i < header.size(); ++i) b[8 + i] = uint8_t(header[i]);
  for (size_t i = 0; i < data_len; ++i) b[8 + header.size() + i] = uint8_t(i * 7);
  return b;
}

// One F32 tensor entry.
std::string entry(const std::string& name, const std::string& shape, const std::string& offsets,
                  const std::string& dtype = "\"F32\"") {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets +
         "}";
}

// {"a": F32 [2, 2] at [0, 16]} with its 16 bytes, but with one part replaced.
Bytes one_tensor(const std::string& shape = "[2,2]", const std::string& offsets = "[0,16]",
                 const std::string& dtype = "\"F32\"", size_t data_len = 16) {
  return raw("{" + entry("a", shape, offsets, dtype) + "}", data_len);
}

struct Case {
  const char* name;
  std::function<Bytes()> make;
  const char* expect;  // substring of the error message
};

const Case kCases[] = {
    // --- the length field ---
    {"empty_file", [] { return Bytes{}; }, "0 bytes, shorter than the 8-byte header length"},
    {"five_bytes",
     [] {
       return Bytes{1, 2, 3, 4, 5};
     },
     "5 bytes, shorter than the 8-byte"},
    {"header_length_zero", [] { return raw("", 16, 0); }, "header length 0"},
    {"header_length_over_limit", [] { return raw("{}", 0, 100'000'001); },
     "header length 100000001 exceeds the limit"},
    {"header_length_max_u64", [] { return raw("{}", 0, ~uint64_t(0)); }, "exceeds the limit of 100000000"},
    {"header_length_at_limit_past_end", [] { return raw("{}", 0, 100'000'000); },
     "header length 100000000 runs past the end"},
    {"header_length_past_end", [] { return raw("{}      ", 0, 9); },
     "header length 9 runs past the end of the file (16 bytes)"},
    // --- the header text ---
    {"invalid_json_cut_object", [] { return raw("{\"a\":   ", 0); }, "header is not valid JSON"},
    {"invalid_json_trailing_garbage", [] { return raw("{}garbage", 0); }, "header is not valid JSON"},
    {"invalid_json_nul_padding", [] { return raw(std::string("{}\0\0\0\0\0\0", 8), 0); },
     "header is not valid JSON"},
    {"invalid_json_single_quotes", [] { return raw("{'a': 1}", 0); }, "header is not valid JSON"},
    {"non_utf8_header", [] { return raw("{\"\xff\xfe\":{}}", 0); }, "header is not valid UTF-8"},
    {"overlong_utf8_slash", [] { return raw("{\"\xc0\xaf\":{}}", 0); }, "header is not valid UTF-8"},
    {"utf8_surrogate", [] { return raw("{\"\xed\xa0\x80\":{}}", 0); }, "header is not valid UTF-8"},
    {"json_array", [] { return raw("[]", 0); }, "header is a JSON array, not a JSON object"},
    {"json_string", [] { return raw("\"hello\"", 0); }, "header is a JSON string, not a JSON object"},
    {"json_null", [] { return raw("null", 0); }, "header is a JSON null"},
    {"leading_whitespace", [] { return raw(" {}", 0); }, "does not start with '{'"},
    // --- tensor entries ---
    {"entry_number", [] { return raw("{\"a\":5}", 0); },
     "tensor 'a': entry is a JSON number, not a JSON object"},
    {"entry_deeply_nested_array",
     [] { return raw("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0); },
     "header is not valid JSON: JSON nested deeper than 256 levels"},
    {"missing_dtype", [] { return raw("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8); },
     "tensor 'a': missing field 'dtype'"},
    {"missing_shape", [] { return raw("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8); },
     "tensor 'a': missing field 'shape'"},
    {"missing_data_offsets", [] { return raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8); },
     "missing field 'data_offsets'"},
    {"dtype_not_string", [] { return one_tensor("[2,2]", "[0,16]", "32"); }, "field 'dtype' is not a string"},
    {"unknown_dtype", [] { return one_tensor("[2,2]", "[0,16]", "\"F128\""); },
     "tensor 'a': unknown dtype 'F128'"},
    {"lowercase_dtype", [] { return one_tensor("[2,2]", "[0,16]", "\"f32\""); }, "unknown dtype 'f32'"},
    {"packed_dtype_name", [] { return one_tensor("[4]", "[0,2]", "\"NF4\"", 2); }, "unknown dtype 'NF4'"},
    {"shape_not_array", [] { return one_tensor("4"); }, "field 'shape' is not an array"},
    {"shape_negative_dim", [] { return one_tensor("[-2,-2]"); }, "shape [-2,-2] has a negative dimension"},
    {"shape_float_dim", [] { return one_tensor("[2.5,2]"); }, "has a non-integer dimension"},
    {"shape_integral_float_dim", [] { return one_tensor("[2.0,2]"); },
     "shape [2.0,2] has a non-integer dimension"},
    {"shape_string_dim", [] { return one_tensor("[\"2\",2]"); }, "has a non-integer dimension"},
    {"shape_dim_beyond_u64", [] { return one_tensor("[100000000000000000000000,1]"); },
     "non-integer dimension"},
    {"shape_numel_overflow", [] { return one_tensor("[4294967296,4294967296,0]"); },
     "overflows a 64-bit byte count"},
    {"shape_bytes_overflow", [] { return one_tensor("[2305843009213693952]", "[0,16]", "\"F64\""); },
     "F64 overflows"},
    {"shape_dim_beyond_int64", [] { return one_tensor("[18446744073709551615]"); }, "overflows"},
    {"offsets_one_element", [] { return one_tensor("[2,2]", "[16]"); },
     "data_offsets [16] are not two non-negative integers"},
    {"offsets_three_elements", [] { return one_tensor("[2,2]", "[0,8,16]"); },
     "are not two non-negative integers"},
    {"offsets_negative", [] { return one_tensor("[2,2]", "[-16,0]"); }, "data_offsets [-16,0] are not two"},
    {"offsets_float", [] { return one_tensor("[2,2]", "[0,16.0]"); }, "are not two non-negative integers"},
    {"offsets_not_array", [] { return one_tensor("[2,2]", "\"0-16\""); },
     "are not two non-negative integers"},
    {"offsets_begin_after_end", [] { return one_tensor("[0]", "[16,0]"); },
     "data_offsets [16, 0]: begin is after end"},
    {"offsets_end_beyond_data", [] { return one_tensor("[2,2]", "[0,16]", "\"F32\"", 12); },
     "data_offsets [0, 16] end beyond the data section of 12 bytes"},
    // --- a header that claims more than the file holds: refused before anything is read ---
    {"claims_terabytes", [] { return one_tensor("[1099511627776]", "[0,4398046511104]", "\"F32\"", 16); },
     "tensor 'a': data_offsets [0, 4398046511104] end beyond the data section of 16 bytes"},
    {"claims_2pow62_elements",
     [] { return one_tensor("[4611686018427387904]", "[0,4611686018427387904]", "\"U8\"", 16); },
     "data_offsets [0, 4611686018427387904] end beyond the data section of 16 bytes"},
    {"claims_2pow62_f32_elements", [] { return one_tensor("[4611686018427387904]", "[0,16]"); },
     "shape [4611686018427387904] of F32 overflows a 64-bit byte count"},
    {"size_mismatch", [] { return one_tensor("[2,2]", "[0,12]", "\"F32\"", 12); },
     "tensor 'a': data_offsets [0, 12] hold 12 bytes but F32 [2, 2] needs 16"},
    {"size_mismatch_bf16", [] { return one_tensor("[3]", "[0,3]", "\"BF16\"", 3); },
     "hold 3 bytes but BF16 [3] needs 6"},
    // --- layout of the data section ---
    {"overlap",
     [] { return raw("{" + entry("a", "[4]", "[0,16]") + "," + entry("b", "[4]", "[8,24]") + "}", 24); },
     "tensor 'b': data_offsets [8, 24] overlap tensor 'a' [0, 16]"},
    {"overlap_identical",
     [] { return raw("{" + entry("a", "[4]", "[0,16]") + "," + entry("b", "[4]", "[0,16]") + "}", 16); },
     "overlap tensor 'a'"},
    {"empty_tensor_inside_another",
     [] { return raw("{" + entry("a", "[4]", "[0,16]") + "," + entry("e", "[0]", "[8,8]") + "}", 16); },
     "tensor 'e': data_offsets [8, 8] overlap"},
    {"gap_between_tensors",
     [] { return raw("{" + entry("a", "[2]", "[0,8]") + "," + entry("b", "[2]", "[16,24]") + "}", 24); },
     "tensor 'b': data_offsets [16, 24] leave a gap of 8 bytes"},
    {"not_starting_at_zero", [] { return one_tensor("[2,2]", "[8,24]", "\"F32\"", 24); },
     "leave a gap of 8 bytes after offset 0"},
    {"trailing_bytes", [] { return one_tensor("[2,2]", "[0,16]", "\"F32\"", 20); },
     "tensors cover 16 bytes but the data section holds 20"},
    {"no_tensors_but_data", [] { return raw("{}      ", 4); },
     "tensors cover 0 bytes but the data section holds 4"},
    // --- duplicates ---
    {"duplicate_tensor_name",
     [] { return raw("{" + entry("a", "[2]", "[0,8]") + "," + entry("a", "[2]", "[8,16]") + "}", 16); },
     "duplicate tensor name 'a'"},
    {"duplicate_field",
     [] {
       return raw("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
     },
     "duplicate key 'dtype' in entry 'a'"},
    {"duplicate_metadata", [] { return raw("{\"__metadata__\":{},\"__metadata__\":{}}", 0); },
     "duplicate key '__metadata__'"},
    {"duplicate_metadata_key", [] { return raw("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0); },
     "duplicate key 'k' in entry '__metadata__'"},
    // --- __metadata__ ---
    {"metadata_string", [] { return raw("{\"__metadata__\":\"pt\"}", 0); },
     "__metadata__ is a JSON string, not an object"},
    {"metadata_null", [] { return raw("{\"__metadata__\":null}", 0); }, "__metadata__ is a JSON null"},
    {"metadata_number_value", [] { return raw("{\"__metadata__\":{\"format\":1}}", 0); },
     "__metadata__ entry 'format' is a JSON number, not a string"},
    {"metadata_nested_value", [] { return raw("{\"__metadata__\":{\"x\":{\"y\":\"z\"}}}", 0); },
     "__metadata__ entry 'x' is a JSON object"},
    // --- a name with a newline stays on one line of message ---
    {"control_chars_in_name", [] { return raw("{\"a\\nb\":7}", 0); },
     "tensor 'a\\x0ab': entry is a JSON number"},
    // --- plain garbage ---
    {"garbage_bytes",
     [] {
       std::mt19937_64 rng(1234);
       Bytes b = raw("", 0, 48);
       for (int i = 0; i < 56; ++i) b.push_back(uint8_t(rng()));
       return b;
     },
     "header is not valid"},
};

class Malformed : public testing::TestWithParam<Case> {};

TEST_P(Malformed, RejectedWithFormatErrorNamingFileAndFault) {
  const Case& c = GetParam();
  test::TempDir dir;
  std::string file = std::string(c.name) + ".safetensors";
  test::write_file(dir / file, c.make());
  try {
    SafetensorsFile::open(dir / file);
    FAIL() << "accepted a malformed file";
  } catch (const FormatError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "message: " << msg << "\nexpected: " << c.expect;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  // The in-memory parser reports the same, under the origin it is given.
  Bytes b = c.make();
  try {
    parse_safetensors_header(b.data(), b.size(), "origin-name");
    FAIL() << "parse_safetensors_header accepted it";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("origin-name: "), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Safetensors, Malformed, testing::ValuesIn(kCases),
                         [](const testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

// What the Python library accepts, we accept: empty tensors anywhere, scalars, no tensors.
TEST(SafetensorsAccepts, EdgeCasesThePythonLibraryAccepts) {
  auto ok = [](const Bytes& b) {
    SafetensorsHeader h = parse_safetensors_header(b.data(), b.size(), "ok");
    return h.tensors.size();
  };
  EXPECT_EQ(ok(raw("{}", 0)), 0u);
  EXPECT_EQ(ok(raw("{\"__metadata__\":{}}", 0)), 0u);
  EXPECT_EQ(ok(raw("{" + entry("s", "[]", "[0,4]") + "}", 4)), 1u);  // scalar
  EXPECT_EQ(ok(raw("{" + entry("e", "[0,3]", "[0,0]") + "," + entry("f", "[0]", "[0,0]") + "}", 0)), 2u);
  // Empty tensors at the start, between and at the end of others.
  EXPECT_EQ(ok(raw("{" + entry("a", "[1]", "[0,4]") + "," + entry("e1", "[0]", "[0,0]") + "," +
                       entry("e2", "[0]", "[4,4]") + "," + entry("b", "[1]", "[4,8]") + "," +
                       entry("e3", "[0]", "[8,8]") + "}",
                   8)),
            5u);
  // Whitespace inside and after the JSON; entries in any order; unknown extra fields.
  Bytes b = raw("{ \"b\" : {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]} ,\n" +
                    entry("a", "[1]", "[0,4]") +
                    ",\"c\":{\"data_offsets\":[8,8],\"shape\":[0],\"dtype\":\"U8\",\"extra\":[1,2]}}\t  ",
                8);
  SafetensorsHeader h = parse_safetensors_header(b.data(), b.size(), "ok");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[2].name, "c");
  EXPECT_EQ(h.data_start, b.size() - 8);
}

// Every strict prefix of a valid file is rejected (never a crash, never a partial success).
TEST(SafetensorsMalformedSweep, EveryTruncationIsRejected) {
  Tensor a = Tensor::from_vector<float>({2, 3}, DType::F32, {1, 2, 3, 4, 5, 6});
  Tensor b = Tensor::from_vector<uint8_t>({5}, DType::U8, {1, 2, 3, 4, 5});
  Bytes full = serialize_safetensors({{"a", a}, {"b", b}, {"empty", Tensor::empty({0}, DType::F16)}});
  ASSERT_NO_THROW(parse_safetensors_header(full.data(), full.size(), "full"));
  test::TempDir dir;
  for (size_t cut = 0; cut < full.size(); ++cut) {
    Bytes part(full.begin(), full.begin() + std::ptrdiff_t(cut));
    EXPECT_THROW(parse_safetensors_header(part.data(), part.size(), "cut"), FormatError) << "cut at " << cut;
    if (cut % 7 == 0 || cut < 16) {  // through the file path too (mmap of short files)
      test::write_file(dir / "cut.safetensors", part);
      EXPECT_THROW(SafetensorsFile::open(dir / "cut.safetensors"), FormatError) << "cut at " << cut;
    }
  }
}

// Random corruption: either still a valid file (then every view works) or a FormatError.
TEST(SafetensorsMalformedSweep, RandomCorruptionNeverCrashes) {
  uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  Tensor a = Tensor::from_vector<float>({2, 3}, DType::F32, {1, 2, 3, 4, 5, 6});
  Tensor i = Tensor::from_vector<int64_t>({2}, DType::I64, {7, 8});
  Bytes full = serialize_safetensors({{"layer.0.weight", a}, {"ids", i}}, {.metadata = {{"k", "v"}}});
  size_t header_end = 8 + size_t(full[0]) + 256 * size_t(full[1]);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes b = full;
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t pos = rng() % header_end;  // mostly the header: that is where parsing happens
      b[pos] = (rng() & 1) ? uint8_t(rng()) : uint8_t(" {}[],:\"0123456789-.e"[rng() % 21]);
    }
    try {
      SafetensorsHeader h = parse_safetensors_header(b.data(), b.size(), "fuzz");
      ++accepted;
      auto storage = std::make_shared<Storage>(b.data(), b.size(), Device::cpu(), nullptr);
      for (const auto& t : h.tensors) {
        Tensor v = Tensor::from_storage(storage, h.data_start + t.begin, t.shape, t.dtype);
        EXPECT_EQ(v.nbytes(), t.end - t.begin);
      }
    } catch (const FormatError&) {
    }
  }
  RecordProperty("accepted", accepted);
}

}  // namespace
