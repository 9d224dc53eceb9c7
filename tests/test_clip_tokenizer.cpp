// CLIP tokenizer: every golden prompt id-for-id against transformers' slow CLIPTokenizer (ftfy) and
// OpenAI's SimpleTokenizer, the derived vocabulary against diffusers' vocab.json, and file errors.
#include <gtest/gtest.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "text/clip_tokenizer.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using kiln::CLIPTokenizer;
using nlohmann::json;

const fs::path kGolden = KILN_GOLDEN_DIR;
const fs::path kDiffusersTokenizer = kGolden / "tiny-sd/diffusers-configs/tokenizer";
const fs::path kMerges = fs::path(KILN_SOURCE_DIR) / "data/clip/merges.txt";

json load_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return json::parse(in);
}

const json& golden() {
  static const json j = load_json(kGolden / "tokenizer.json");
  return j;
}

const CLIPTokenizer& embedded() {
  static const CLIPTokenizer tok = CLIPTokenizer::from_embedded();
  return tok;
}

const CLIPTokenizer& from_diffusers_files() {
  static const CLIPTokenizer tok = CLIPTokenizer::from_files(kDiffusersTokenizer / "vocab.json", kMerges);
  return tok;
}

template <class T>
std::string join(const std::vector<T>& v) {
  std::ostringstream ss;
  ss << "[";
  for (size_t i = 0; i < v.size(); ++i) ss << (i ? ", " : "") << v[i];
  ss << "]";
  return ss.str();
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  for (const auto& c : golden()["cases"]) names.push_back(c["name"].get<std::string>());
  return names;
}

const json& find_case(const std::string& name) {
  for (const auto& c : golden()["cases"])
    if (c["name"] == name) return c;
  throw std::runtime_error("no golden case " + name);
}

class GoldenTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTokenizer, MatchesTransformersAndOpenAI) {
  const json& c = find_case(GetParam());
  const std::string text = c["text"].get<std::string>();
  const auto hf_tokens = c["hf_tokens"].get<std::vector<std::string>>();
  auto hf_ids = c["hf_ids_with_bos_eos"].get<std::vector<int64_t>>();
  ASSERT_GE(hf_ids.size(), 2u);
  ASSERT_EQ(hf_ids.front(), CLIPTokenizer::kBosId);
  ASSERT_EQ(hf_ids.back(), CLIPTokenizer::kEosId);
  hf_ids = std::vector<int64_t>(hf_ids.begin() + 1, hf_ids.end() - 1);
  const auto sd77 = c["sd_input_ids_77"].get<std::vector<int64_t>>();
  const auto openai_ids = c["openai_ids"].get<std::vector<int64_t>>();

  for (const CLIPTokenizer* tok : {&embedded(), &from_diffusers_files()}) {
    const std::vector<int64_t> ids = tok->encode(text);
    EXPECT_EQ(ids, hf_ids) << "case " << GetParam() << "\n  kiln: " << join(ids)
                           << "\n  hf:   " << join(hf_ids);
    const std::vector<std::string> toks = tok->tokens(text);
    EXPECT_EQ(toks, hf_tokens) << "case " << GetParam() << "\n  kiln: " << join(toks)
                               << "\n  hf:   " << join(hf_tokens);
    const std::vector<int64_t> sd = tok->encode_sd(text);
    EXPECT_EQ(sd, sd77) << "case " << GetParam() << "\n  kiln: " << join(sd) << "\n  hf:   " << join(sd77);
    if (!c["differs"].get<bool>()) {
      EXPECT_EQ(ids, openai_ids) << "case " << GetParam() << "\n  kiln:   " << join(ids)
                                 << "\n  openai: " << join(openai_ids);
    }
    EXPECT_EQ(tok->decode(openai_ids), c["openai_decoded"].get<std::string>()) << "case " << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTokenizer, ::testing::ValuesIn(case_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(CLIPTokenizer, GoldenHasAllCases) {
  EXPECT_EQ(golden()["cases"].size(), 29u);
  EXPECT_EQ(golden()["vocab_size"].get<int64_t>(), embedded().vocab_size());
}

TEST(CLIPTokenizer, EmbeddedVocabEqualsDiffusersVocabJson) {
  const json vocab = load_json(kDiffusersTokenizer / "vocab.json");
  const CLIPTokenizer& tok = embedded();
  ASSERT_EQ(tok.vocab_size(), static_cast<int64_t>(vocab.size()));
  ASSERT_EQ(tok.vocab_size(), 49408);
  size_t mismatches = 0;
  for (const auto& [token, id] : vocab.items()) {
    const auto got = tok.token_to_id(token);
    if (!got || *got != id.get<int64_t>() || tok.id_to_token(id.get<int64_t>()) != token) {
      if (++mismatches <= 10) {
        ADD_FAILURE() << "token '" << token << "': vocab.json id " << id << ", kiln "
                      << (got ? std::to_string(*got) : "missing");
      }
    }
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(tok.id_to_token(CLIPTokenizer::kBosId), "<|startoftext|>");
  EXPECT_EQ(tok.id_to_token(CLIPTokenizer::kEosId), "<|endoftext|>");
}

// Expect kiln::Error whose message names `file`.
template <class F>
void expect_file_error(F&& f, const fs::path& file) {
  try {
    f();
    ADD_FAILURE() << "no error for " << file;
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
}

TEST(CLIPTokenizer, BadFilesThrowNamingTheFile) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_tok_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path vocab = kDiffusersTokenizer / "vocab.json";
  const fs::path missing = dir / "missing.json";
  expect_file_error([&] { CLIPTokenizer::from_files(missing, kMerges); }, missing);
  expect_file_error([&] { CLIPTokenizer::from_files(vocab, dir / "none.txt"); }, dir / "none.txt");
  expect_file_error([&] { CLIPTokenizer::from_folder(dir); }, dir / "vocab.json");

  const fs::path broken = dir / "broken.json";
  std::ofstream(broken) << "{\"a\": 0, ";
  expect_file_error([&] { CLIPTokenizer::from_files(broken, kMerges); }, broken);
  const fs::path not_object = dir / "list.json";
  std::ofstream(not_object) << "[1, 2]";
  expect_file_error([&] { CLIPTokenizer::from_files(not_object, kMerges); }, not_object);
  const fs::path gaps = dir / "gaps.json";
  std::ofstream(gaps) << "{\"a\": 0, \"b\": 5}";
  expect_file_error([&] { CLIPTokenizer::from_files(gaps, kMerges); }, gaps);
  const fs::path no_specials = dir / "nospecial.json";
  std::ofstream(no_specials) << "{\"a\": 0, \"b\": 1}";
  expect_file_error([&] { CLIPTokenizer::from_files(no_specials, kMerges); }, no_specials);
  // vocab.json and merges.txt swapped.
  expect_file_error([&] { CLIPTokenizer::from_files(vocab, vocab); }, vocab);
  const fs::path bad_merges = dir / "merges.txt";
  std::ofstream(bad_merges) << "#version: 0.2\ni n\nt h e\n";
  expect_file_error([&] { CLIPTokenizer::from_files(vocab, bad_merges); }, bad_merges);
  fs::remove_all(dir);
}

TEST(CLIPTokenizer, EncodeSdFraming) {
  const CLIPTokenizer& tok = embedded();
  const std::vector<int64_t> empty = tok.encode_sd("");
  ASSERT_EQ(empty.size(), 77u);
  EXPECT_EQ(empty[0], CLIPTokenizer::kBosId);
  for (size_t i = 1; i < empty.size(); ++i) EXPECT_EQ(empty[i], CLIPTokenizer::kEosId);
  std::string many;
  for (int i = 0; i < 100; ++i) many += "cat ";
  const std::vector<int64_t> ids = tok.encode(many);
  ASSERT_EQ(ids.size(), 100u);
  const std::vector<int64_t> framed = tok.encode_sd(many, 10);
  ASSERT_EQ(framed.size(), 10u);
  EXPECT_EQ(framed.front(), CLIPTokenizer::kBosId);
  EXPECT_EQ(framed.back(), CLIPTokenizer::kEosId);
  for (size_t i = 1; i + 1 < framed.size(); ++i) EXPECT_EQ(framed[i], ids[0]);
  EXPECT_THROW(tok.id_to_token(49408), kiln::Error);
  EXPECT_THROW(tok.id_to_token(-1), kiln::Error);
}

// ftfy behaviour beyond the golden prompts that kiln reproduces (see docs/tokenizer.md).
TEST(CLIPTokenizer, TextCleaning) {
  using kiln::clip_clean_text;
  using kiln::ftfy_fix_text;
  EXPECT_EQ(ftfy_fix_text("&amp;amp; &AMP; &EACUTE; &eacute &#65;&#x42;&#X43; &#59; &bogus;"),
            "& & \u00C9 &eacute ABC &#59; &bogus;");
  EXPECT_EQ(ftfy_fix_text("a &amp; b\n<i>&amp;</i>\n&amp;"), "a & b\n<i>&amp;</i>\n&amp;");
  EXPECT_EQ(ftfy_fix_text("\x1b[31mred\x1b[0m\x07"), "red");
  EXPECT_EQ(ftfy_fix_text("\uFB01\uFB02 \u0133 \u0149"), "fifl ij 'n");
  EXPECT_EQ(ftfy_fix_text("\uFF21\uFF42\uFF43\uFF11\u3000\uFF76"), "Abc1 \u30AB");
  EXPECT_EQ(ftfy_fix_text("\u201Cx\u201D \u2018y\u2019 \u02BCz"), "\"x\" 'y' 'z");
  EXPECT_EQ(ftfy_fix_text("a\r\nb\rc\u2028d"), "a\nb\nc\nd");
  EXPECT_EQ(ftfy_fix_text("e\u0301"), "\u00E9");
  // UTF-8 read as Windows-1252 / Latin-1, whole and mixed with correct text.
  EXPECT_EQ(ftfy_fix_text("caf\u00C3\u00A9"), "caf\u00E9");
  EXPECT_EQ(ftfy_fix_text("\u00E2\u0080\u0099"), "'");
  EXPECT_EQ(ftfy_fix_text("\u0142\u00F3d\u017A caf\u00C3\u00A9"), "\u0142\u00F3d\u017A caf\u00E9");
  EXPECT_EQ(ftfy_fix_text("\u0093hi\u0094"), "\"hi\"");
  // Correct accented text is left alone.
  EXPECT_EQ(ftfy_fix_text("CAF\u00C9\u201D \u00C9T\u00C9"), "CAF\u00C9\" \u00C9T\u00C9");
  // Python str.lower(): full mappings and final sigma.
  EXPECT_EQ(clip_clean_text("\u039F\u0394\u039F\u03A3 \u0130"), "\u03BF\u03B4\u03BF\u03C2 i\u0307");
  EXPECT_EQ(clip_clean_text("  A\t\nB\u00A0C  "), "a b c");
}

TEST(CLIPTokenizer, SpecialTokenText) {
  const CLIPTokenizer& tok = embedded();
  // Literal special tokens are split out before cleaning; case variants become them after lower().
  EXPECT_EQ(tok.encode("<|endoftext|>"), std::vector<int64_t>{CLIPTokenizer::kEosId});
  EXPECT_EQ(tok.encode("<|ENDOFTEXT|>"), std::vector<int64_t>{CLIPTokenizer::kEosId});
  EXPECT_EQ(
      tok.encode("a<|startoftext|>b"),
      (std::vector<int64_t>{*tok.token_to_id("a</w>"), CLIPTokenizer::kBosId, *tok.token_to_id("b</w>")}));
}

TEST(CLIPTokenizer, ConcurrentEncodeMatchesSerial) {
  const CLIPTokenizer tok = CLIPTokenizer::from_embedded();
  std::vector<std::string> texts;
  for (const auto& c : golden()["cases"]) texts.push_back(c["text"].get<std::string>());
  std::vector<std::vector<int64_t>> expected;
  for (const auto& t : texts) expected.push_back(embedded().encode(t));
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 1);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = 0; i < texts.size(); ++i)
          if (tok.encode(texts[i]) != expected[i]) ok[k] = 0;
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(ok[k], 1) << "thread " << k;
}

}  // namespace
