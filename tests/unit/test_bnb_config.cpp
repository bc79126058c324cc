// BitsAndBytesConfig against transformers 5.17's behaviour: every validation error (as a
// ConfigError naming the field), from_dict's Python-type checks, dtype name resolution,
// quantization_method, the diff dict, and to_json_string's exact Python json.dumps text.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/error.h"
#include "test_support.h"

using namespace nibble;
using nlohmann::json;

namespace {

// Runs f, expects a ConfigError whose message holds every one of `parts`.
template <typename F>
void expect_config_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

BitsAndBytesConfig nf4_dq() {
  return {.load_in_4bit = true,
          .bnb_4bit_compute_dtype = "bfloat16",
          .bnb_4bit_quant_type = "nf4",
          .bnb_4bit_use_double_quant = true};
}

// The full dict of a default config, from FORMATS.md §4 / transformers' __init__ defaults.
json default_dict() {
  return {{"quant_method", "bitsandbytes"},
          {"_load_in_4bit", false},
          {"_load_in_8bit", false},
          {"load_in_4bit", false},
          {"load_in_8bit", false},
          {"llm_int8_threshold", 6.0},
          {"llm_int8_skip_modules", nullptr},
          {"llm_int8_enable_fp32_cpu_offload", false},
          {"llm_int8_has_fp16_weight", false},
          {"bnb_4bit_compute_dtype", "float32"},
          {"bnb_4bit_quant_type", "fp4"},
          {"bnb_4bit_use_double_quant", false},
          {"bnb_4bit_quant_storage", "uint8"}};
}

}  // namespace

TEST(BnbConfig, Defaults) {
  BitsAndBytesConfig c;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.to_dict(), default_dict());
  EXPECT_TRUE(c.to_dict()["llm_int8_threshold"].is_number_float());
  EXPECT_EQ(c.to_diff_dict(), json::object());
  EXPECT_EQ(c.to_json_string(), "{}\n");
  EXPECT_FALSE(c.is_quantizable());
  EXPECT_FALSE(c.is_quantized());
  EXPECT_EQ(c.quantization_method(), std::nullopt);
  EXPECT_EQ(c.compute_dtype(), DType::F32);
  EXPECT_EQ(c.quant_storage(), DType::U8);
}

TEST(BnbConfig, QuantizationMethod) {
  EXPECT_EQ(BitsAndBytesConfig{.load_in_8bit = true}.quantization_method(), "llm_int8");
  EXPECT_EQ(BitsAndBytesConfig{.load_in_4bit = true}.quantization_method(), "fp4");
  EXPECT_EQ(nf4_dq().quantization_method(), "nf4");
  // quant_type matters only with load_in_4bit, as in transformers.
  EXPECT_EQ((BitsAndBytesConfig{.load_in_8bit = true, .bnb_4bit_quant_type = "nf4"}.quantization_method()),
            "llm_int8");
  EXPECT_EQ(BitsAndBytesConfig{.bnb_4bit_quant_type = "nf4"}.quantization_method(), std::nullopt);
  EXPECT_TRUE(nf4_dq().is_quantized());
}

TEST(BnbConfig, BothLoadFlagsIsAnError) {
  BitsAndBytesConfig c{.load_in_8bit = true, .load_in_4bit = true};
  expect_config_error([&] { c.validate(); }, {"BitsAndBytesConfig", "load_in_4bit", "load_in_8bit"});
  expect_config_error([&] { c.to_dict(); }, {"load_in_4bit and load_in_8bit"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"load_in_4bit", true}, {"load_in_8bit", true}});
      },
      {"load_in_4bit", "load_in_8bit"});
}

TEST(BnbConfig, ComputeDTypeNames) {
  // getattr(torch, name) accepts aliases; to_dict writes str(dtype).split(".")[1].
  struct Case {
    const char* given;
    const char* written;
    DType dtype;
  };
  for (const Case& k :
       {Case{"float32", "float32", DType::F32}, Case{"float", "float32", DType::F32},
        Case{"float16", "float16", DType::F16}, Case{"half", "float16", DType::F16},
        Case{"bfloat16", "bfloat16", DType::BF16}, Case{"torch.bfloat16", "bfloat16", DType::BF16},
        Case{"torch.half", "float16", DType::F16}, Case{"double", "float64", DType::F64}}) {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_compute_dtype = k.given};
    EXPECT_EQ(c.to_dict()["bnb_4bit_compute_dtype"], k.written) << k.given;
    EXPECT_EQ(c.compute_dtype(), k.dtype) << k.given;
  }
  // An explicit float32 equals the default, so the diff dict leaves it out (as the fixtures
  // made with bnb_4bit_compute_dtype=torch.float32 show).
  BitsAndBytesConfig f32{.bnb_4bit_compute_dtype = "torch.float32"};
  EXPECT_EQ(f32.to_diff_dict(), json::object());
  BitsAndBytesConfig bf16{.bnb_4bit_compute_dtype = "bfloat16"};
  EXPECT_EQ(bf16.to_diff_dict(), (json{{"bnb_4bit_compute_dtype", "bfloat16"}}));
}

TEST(BnbConfig, ComputeDTypeUnknownIsAnError) {
  // Not attributes of torch: nibble's short names and typos are refused as transformers does.
  for (const char* bad : {"fp32", "bf16", "Float32", "torch.fp16", "", "Tensor", "nf4"}) {
    BitsAndBytesConfig c{.bnb_4bit_compute_dtype = bad};
    expect_config_error([&] { c.validate(); }, {"bnb_4bit_compute_dtype", std::string("'") + bad + "'"});
  }
  // A control character in the name is shown escaped: the message stays one line.
  expect_config_error([] { BitsAndBytesConfig{.bnb_4bit_compute_dtype = "a\nb"}.validate(); }, {"'a\\x0ab'"});
}

TEST(BnbConfig, ComputeDTypeValidForTorchButNotForNibble) {
  // transformers accepts any torch dtype; nibble serializes it but cannot compute in it.
  for (const char* name : {"complex64", "int8", "cfloat", "uint16"}) {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_compute_dtype = name};
    EXPECT_NO_THROW(c.validate()) << name;
    EXPECT_THROW(c.compute_dtype(), UnsupportedError) << name;
  }
  EXPECT_EQ((BitsAndBytesConfig{.bnb_4bit_compute_dtype = "cfloat"}.to_dict()["bnb_4bit_compute_dtype"]),
            "complex64");
}

TEST(BnbConfig, QuantStorage) {
  struct Case {
    const char* given;
    DType dtype;
  };
  for (const Case& k :
       {Case{"float16", DType::F16}, Case{"float32", DType::F32}, Case{"int8", DType::I8},
        Case{"uint8", DType::U8}, Case{"float64", DType::F64}, Case{"bfloat16", DType::BF16}}) {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_quant_storage = k.given};
    EXPECT_EQ(c.quant_storage(), k.dtype) << k.given;
    EXPECT_EQ(c.to_dict()["bnb_4bit_quant_storage"], k.given);
  }
  // A torch.dtype object (the "torch." spelling) may be an alias; it is written canonically.
  BitsAndBytesConfig half{.bnb_4bit_quant_storage = "torch.half"};
  EXPECT_EQ(half.quant_storage(), DType::F16);
  EXPECT_EQ(half.to_diff_dict(), (json{{"bnb_4bit_quant_storage", "float16"}}));
}

TEST(BnbConfig, QuantStorageOutsideTheListIsAnError) {
  try {
    BitsAndBytesConfig{.bnb_4bit_quant_storage = "int4"}.validate();
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "BitsAndBytesConfig: bnb_4bit_quant_storage must be one of float16, float32, int8, uint8, "
                 "float64, bfloat16 (got 'int4')");
  }
  // transformers compares a string with its list literally: aliases are refused.
  for (const char* bad : {"half", "float", "torch.int16", "torch.nope", "u8", ""}) {
    BitsAndBytesConfig c{.bnb_4bit_quant_storage = bad};
    expect_config_error([&] { c.validate(); }, {"bnb_4bit_quant_storage", std::string("'") + bad + "'"});
  }
}

TEST(BnbConfig, QuantTypeMustBeFp4OrNf4) {
  for (const char* bad : {"int4", "NF4", "", "fp8"}) {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_quant_type = bad};
    expect_config_error([&] { c.validate(); }, {"bnb_4bit_quant_type", std::string("'") + bad + "'"});
  }
}

TEST(BnbConfig, DiffDictKeepsBothFlagSpellings) {
  EXPECT_EQ(nf4_dq().to_diff_dict(), (json{{"_load_in_4bit", true},
                                           {"load_in_4bit", true},
                                           {"bnb_4bit_compute_dtype", "bfloat16"},
                                           {"bnb_4bit_quant_type", "nf4"},
                                           {"bnb_4bit_use_double_quant", true}}));
  // An empty skip list differs from None.
  BitsAndBytesConfig empty{.llm_int8_skip_modules = std::vector<std::string>{}};
  EXPECT_EQ(empty.to_diff_dict(), (json{{"llm_int8_skip_modules", json::array()}}));
  EXPECT_EQ(empty.to_json_string(), "{\n  \"llm_int8_skip_modules\": []\n}\n");
}

// ---- from_dict ------------------------------------------------------------------------------

TEST(BnbConfig, FromDictRoundTrip) {
  std::vector<BitsAndBytesConfig> configs = {
      {},
      nf4_dq(),
      {.load_in_8bit = true,
       .llm_int8_threshold = 3.5,
       .llm_int8_skip_modules = std::vector<std::string>{"lm_head", "head"},
       .llm_int8_enable_fp32_cpu_offload = true,
       .llm_int8_has_fp16_weight = true},
      {.load_in_4bit = true, .bnb_4bit_compute_dtype = "half", .bnb_4bit_quant_storage = "bfloat16"},
  };
  for (const auto& c : configs) {
    json d = c.to_dict();
    EXPECT_EQ(BitsAndBytesConfig::from_dict(d).to_dict(), d) << d.dump();
    EXPECT_EQ(BitsAndBytesConfig::from_dict(json::parse(c.to_json_string(false))).to_dict(), d);
    // The diff dict is enough to rebuild the config: missing keys take the defaults.
    EXPECT_EQ(BitsAndBytesConfig::from_dict(c.to_diff_dict()).to_dict(), d);
  }
}

TEST(BnbConfig, FromDictIgnoresUnknownKeys) {
  json d = {
      {"load_in_4bit", true}, {"quant_method", "whatever"}, {"bnb_4bit_quant_typo", "nf4"}, {"foo", {1, 2}}};
  BitsAndBytesConfig c = BitsAndBytesConfig::from_dict(d);
  EXPECT_TRUE(c.load_in_4bit);
  EXPECT_EQ(c.bnb_4bit_quant_type, "fp4");
  EXPECT_EQ(c.to_dict()["quant_method"], "bitsandbytes");
}

TEST(BnbConfig, FromDictPrivateLoadFlags) {
  // Used only when the public key is absent; the public key wins (transformers reads only it).
  EXPECT_TRUE(BitsAndBytesConfig::from_dict({{"_load_in_4bit", true}}).load_in_4bit);
  EXPECT_TRUE(BitsAndBytesConfig::from_dict({{"_load_in_8bit", true}}).load_in_8bit);
  EXPECT_FALSE(
      BitsAndBytesConfig::from_dict({{"load_in_4bit", false}, {"_load_in_4bit", true}}).load_in_4bit);
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"_load_in_4bit", 1}});
      },
      {"_load_in_4bit", "boolean"});
}

TEST(BnbConfig, FromDictThresholdMustBeAFloat) {
  // isinstance(6, float) is False in Python: an integer threshold is an error.
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"llm_int8_threshold", 6}});
      },
      {"llm_int8_threshold must be a float", "(got 6)"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"llm_int8_threshold", nullptr}});
      },
      {"llm_int8_threshold", "null"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"llm_int8_threshold", "6.0"}});
      },
      {"llm_int8_threshold"});
  EXPECT_EQ(BitsAndBytesConfig::from_dict(json::parse(R"({"llm_int8_threshold": 6.0})")).llm_int8_threshold,
            6.0);
  EXPECT_EQ(BitsAndBytesConfig::from_dict(json::parse(R"({"llm_int8_threshold": 0.0})")).llm_int8_threshold,
            0.0);
}

TEST(BnbConfig, FromDictBoolFieldsMustBeBools) {
  for (const char* key : {"load_in_8bit", "load_in_4bit", "llm_int8_enable_fp32_cpu_offload",
                          "llm_int8_has_fp16_weight", "bnb_4bit_use_double_quant"}) {
    for (const json& bad : {json(1), json(0), json(nullptr), json("true")}) {
      expect_config_error(
          [&] {
            BitsAndBytesConfig::from_dict({{key, bad}});
          },
          {std::string(key) + " must be a boolean", "(got " + bad.dump() + ")"});
    }
  }
}

TEST(BnbConfig, FromDictSkipModules) {
  EXPECT_EQ(BitsAndBytesConfig::from_dict({{"llm_int8_skip_modules", nullptr}}).llm_int8_skip_modules,
            std::nullopt);
  auto c = BitsAndBytesConfig::from_dict({{"llm_int8_skip_modules", {"lm_head", "model.embed"}}});
  ASSERT_TRUE(c.llm_int8_skip_modules.has_value());
  EXPECT_EQ(*c.llm_int8_skip_modules, (std::vector<std::string>{"lm_head", "model.embed"}));
  for (const json& bad : {json("lm_head"), json({{"a", 1}}), json::array({"lm_head", 3}), json(true)})
    expect_config_error(
        [&] {
          BitsAndBytesConfig::from_dict({{"llm_int8_skip_modules", bad}});
        },
        {"llm_int8_skip_modules must be a list of strings"});
}

TEST(BnbConfig, FromDictDTypeFields) {
  // JSON null -> the default; a non-string is transformers' "must be a string or a torch.dtype".
  auto c = BitsAndBytesConfig::from_dict(
      {{"bnb_4bit_compute_dtype", nullptr}, {"bnb_4bit_quant_storage", nullptr}});
  EXPECT_EQ(c.bnb_4bit_compute_dtype, std::nullopt);
  EXPECT_EQ(c.compute_dtype(), DType::F32);
  EXPECT_EQ(c.quant_storage(), DType::U8);
  for (const char* key : {"bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"}) {
    expect_config_error(
        [&] {
          BitsAndBytesConfig::from_dict({{key, 16}});
        },
        {std::string(key) + " must be a string or a torch.dtype", "(got 16)"});
  }
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"bnb_4bit_compute_dtype", "fp16"}});
      },
      {"bnb_4bit_compute_dtype", "'fp16'"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"bnb_4bit_quant_storage", "int4"}});
      },
      {"bnb_4bit_quant_storage", "'int4'"});
}

TEST(BnbConfig, FromDictQuantType) {
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"bnb_4bit_quant_type", nullptr}});
      },
      {"bnb_4bit_quant_type must be a string"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"bnb_4bit_quant_type", 4}});
      },
      {"bnb_4bit_quant_type must be a string"});
  expect_config_error(
      [] {
        BitsAndBytesConfig::from_dict({{"bnb_4bit_quant_type", "int4"}});
      },
      {"bnb_4bit_quant_type must be 'fp4' or 'nf4'"});
  expect_config_error([] { BitsAndBytesConfig::from_dict(json::array()); }, {"expected a JSON object"});
}

// ---- to_json_string: Python's json.dumps(indent=2, sort_keys=True) + "\n" ------------------

TEST(BnbConfig, JsonStringFullDict) {
  // Python output for default_dict(): keys sorted (the "_" keys first: '_' < 'b'), 2-space
  // indent, ": " after keys, "," ending items, 6.0 as "6.0", None as null.
  EXPECT_EQ(BitsAndBytesConfig{}.to_json_string(false),
            "{\n"
            "  \"_load_in_4bit\": false,\n"
            "  \"_load_in_8bit\": false,\n"
            "  \"bnb_4bit_compute_dtype\": \"float32\",\n"
            "  \"bnb_4bit_quant_storage\": \"uint8\",\n"
            "  \"bnb_4bit_quant_type\": \"fp4\",\n"
            "  \"bnb_4bit_use_double_quant\": false,\n"
            "  \"llm_int8_enable_fp32_cpu_offload\": false,\n"
            "  \"llm_int8_has_fp16_weight\": false,\n"
            "  \"llm_int8_skip_modules\": null,\n"
            "  \"llm_int8_threshold\": 6.0,\n"
            "  \"load_in_4bit\": false,\n"
            "  \"load_in_8bit\": false,\n"
            "  \"quant_method\": \"bitsandbytes\"\n"
            "}\n");
}

TEST(BnbConfig, JsonStringFloatsAsPythonRepr) {
  // Python's float repr: shortest round-trip digits; exponent form below 1e-4 and from 1e16,
  // with at least two exponent digits; NaN/Infinity as json.dumps' allow_nan writes them.
  struct Case {
    double v;
    const char* text;
  };
  for (const Case& k : {Case{6.5, "6.5"},
                        Case{0.1, "0.1"},
                        Case{100.0, "100.0"},
                        Case{0.0, "0.0"},
                        Case{-0.0, "-0.0"},
                        Case{1e-4, "0.0001"},
                        Case{1e-5, "1e-05"},
                        Case{1.5e-7, "1.5e-07"},
                        Case{9999999999999998.0, "9999999999999998.0"},
                        Case{1e15, "1000000000000000.0"},
                        Case{1e16, "1e+16"},
                        Case{1e22, "1e+22"},
                        Case{123.456, "123.456"},
                        Case{1234567.125, "1234567.125"},
                        Case{5e-324, "5e-324"},
                        Case{1.7976931348623157e308, "1.7976931348623157e+308"},
                        Case{-2.5, "-2.5"},
                        Case{std::numeric_limits<double>::infinity(), "Infinity"},
                        Case{-std::numeric_limits<double>::infinity(), "-Infinity"},
                        Case{std::nan(""), "NaN"}}) {
    BitsAndBytesConfig c{.llm_int8_threshold = k.v};
    EXPECT_EQ(c.to_json_string(), std::string("{\n  \"llm_int8_threshold\": ") + k.text + "\n}\n") << k.text;
  }
}

TEST(BnbConfig, JsonStringEscapesAsPython) {
  // ensure_ascii=True: non-ASCII and DEL as lowercase \uXXXX (surrogate pairs above the BMP),
  // control characters as \n-style short escapes or \u00XX.
  BitsAndBytesConfig c{.llm_int8_skip_modules = std::vector<std::string>{
                           "lm_head", "caf\xc3\xa9", "\xf0\x9f\x98\x80", "a\"b\\c\n\x01\x7f"}};
  EXPECT_EQ(c.to_json_string(),
            "{\n"
            "  \"llm_int8_skip_modules\": [\n"
            "    \"lm_head\",\n"
            "    \"caf\\u00e9\",\n"
            "    \"\\ud83d\\ude00\",\n"
            "    \"a\\\"b\\\\c\\n\\u0001\\u007f\"\n"
            "  ]\n"
            "}\n");
  BitsAndBytesConfig bad{.llm_int8_skip_modules = std::vector<std::string>{"x\xff"}};
  expect_config_error([&] { bad.to_json_string(); }, {"UTF-8"});
}

// ---- from_config_json ----------------------------------------------------------------------

namespace {
std::filesystem::path write_config(const test::TempDir& dir, const std::string& text) {
  auto p = dir / "config.json";
  std::ofstream(p) << text;
  return p;
}
}  // namespace

TEST(BnbConfig, FromConfigJson) {
  test::TempDir dir;
  json cfg = {{"model_type", "llama"}, {"quantization_config", nf4_dq().to_dict()}};
  auto p = write_config(dir, cfg.dump());
  EXPECT_EQ(BitsAndBytesConfig::from_config_json(p).to_dict(), nf4_dq().to_dict());

  // Backward compatibility as transformers' AutoQuantizationConfig: a truthy load flag makes
  // it a bitsandbytes config even without quant_method.
  p = write_config(dir, R"({"quantization_config": {"load_in_8bit": true}})");
  EXPECT_TRUE(BitsAndBytesConfig::from_config_json(p).load_in_8bit);
}

TEST(BnbConfig, FromConfigJsonErrors) {
  test::TempDir dir;
  EXPECT_THROW(BitsAndBytesConfig::from_config_json(dir / "missing.json"), IoError);
  auto p = write_config(dir, "{not json");
  EXPECT_THROW(BitsAndBytesConfig::from_config_json(p), FormatError);
  std::string where = p.string();
  p = write_config(dir, R"({"model_type": "llama"})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); }, {where, "no quantization_config"});
  p = write_config(dir, R"({"quantization_config": null})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); }, {where, "no quantization_config"});
  p = write_config(dir, R"({"quantization_config": {"quant_method": "gptq", "bits": 4}})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); },
                      {where, "\"gptq\"", "not bitsandbytes"});
  p = write_config(dir, R"({"quantization_config": {"load_in_4bit": false}})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); }, {where, "no quant_method"});
  p = write_config(dir, R"({"quantization_config": [1]})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); }, {where, "not a JSON object"});
  // A bad field names both the file and the field.
  p = write_config(dir,
                   R"({"quantization_config": {"quant_method": "bitsandbytes", "llm_int8_threshold": 6}})");
  expect_config_error([&] { BitsAndBytesConfig::from_config_json(p); },
                      {where, "llm_int8_threshold must be a float"});
}
