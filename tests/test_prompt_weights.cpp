// A1111 prompt emphasis and chunking: the parser against A1111's docstring examples and values
// computed with its Python code, the chunker against layouts built here from tokenizer.encode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "text/clip_tokenizer.h"
#include "text/prompt_weights.h"
#include "util/error.h"

namespace {

using kiln::ChunkOptions;
using kiln::CLIPTokenizer;
using kiln::kBreakWeight;
using kiln::PromptChunk;
using kiln::WeightedText;

constexpr int64_t kBos = CLIPTokenizer::kBosId;
constexpr int64_t kEos = CLIPTokenizer::kEosId;

const CLIPTokenizer& tokenizer() {
  static const CLIPTokenizer tok = CLIPTokenizer::from_embedded();
  return tok;
}

// Weights compared with EXPECT_DOUBLE_EQ (4 ULP), texts exactly.
void expect_parsed(const std::string& prompt, const std::vector<WeightedText>& expected) {
  SCOPED_TRACE("prompt: " + prompt);
  const std::vector<WeightedText> got = kiln::parse_prompt_attention(prompt);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].text, expected[i].text) << "fragment " << i;
    EXPECT_DOUBLE_EQ(got[i].weight, expected[i].weight) << "fragment " << i;
  }
}

int64_t single_token(const std::string& word) {
  const std::vector<int64_t> ids = tokenizer().encode(word);
  EXPECT_EQ(ids.size(), 1u) << word;
  return ids.empty() ? -1 : ids[0];
}

std::string repeat(const std::string& word, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += (i ? " " : "") + word;
  return out;
}

// BOS + body + EOS padding to 77, weights 1.0 except where `weights` (body-aligned) says otherwise.
PromptChunk framed(const std::vector<int64_t>& body, const std::vector<float>& weights = {}) {
  PromptChunk c;
  c.ids.push_back(kBos);
  c.ids.insert(c.ids.end(), body.begin(), body.end());
  c.ids.resize(77, kEos);
  c.weights.assign(77, 1.0f);
  for (size_t i = 0; i < weights.size(); ++i) c.weights[i + 1] = weights[i];
  return c;
}

void expect_chunks(const std::vector<PromptChunk>& got, const std::vector<PromptChunk>& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].ids, expected[i].ids) << "chunk " << i;
    EXPECT_EQ(got[i].weights, expected[i].weights) << "chunk " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// parse_prompt_attention

TEST(ParsePromptAttention, A1111DocstringExamples) {
  expect_parsed("normal text", {{"normal text", 1.0}});
  expect_parsed("an (important) word", {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}});
  expect_parsed("(unbalanced", {{"unbalanced", 1.1}});
  expect_parsed("\\(literal\\]", {{"(literal]", 1.0}});
  expect_parsed("(unnecessary)(parens)", {{"unnecessaryparens", 1.1}});
  expect_parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", {{"a ", 1.0},
                                                                        {"house", 1.5730000000000004},
                                                                        {" ", 1.1},
                                                                        {"on", 1.0},
                                                                        {" a ", 1.1},
                                                                        {"hill", 0.55},
                                                                        {", sun, ", 1.1},
                                                                        {"sky", 1.4641000000000006},
                                                                        {".", 1.1}});
}

TEST(ParsePromptAttention, WeightsMultiplyInA1111Order) {
  // Bit-exact, not just within 4 ULP: A1111 multiplies 1.0 by 1.3, then by 1.1 twice.
  const auto house = kiln::parse_prompt_attention("a (((house:1.3)) [on]");
  ASSERT_GE(house.size(), 2u);
  EXPECT_EQ(house[1].weight, 1.0 * 1.3 * 1.1 * 1.1);
  EXPECT_EQ(house[1].weight, 1.5730000000000004);

  expect_parsed("(a:1.5)", {{"a", 1.5}});
  expect_parsed("((a:1.3))", {{"a", 1.3 * 1.1}});
  EXPECT_EQ(kiln::parse_prompt_attention("((a:1.3))")[0].weight, 1.3 * 1.1);
  expect_parsed("[a]", {{"a", 1 / 1.1}});
  EXPECT_EQ(kiln::parse_prompt_attention("[a]")[0].weight, 1 / 1.1);
  expect_parsed("(a:1.5) [b] ((c))",
                {{"a", 1.5}, {" ", 1.0}, {"b", 0.9090909090909091}, {" ", 1.0}, {"c", 1.2100000000000002}});
  expect_parsed("((a) [b])", {{"a", 1.2100000000000002}, {" ", 1.1}, {"b", 1.0}});
}

TEST(ParsePromptAttention, WeightSyntaxVariants) {
  expect_parsed("(a: 1.5 )", {{"a", 1.5}});  // whitespace around the number
  expect_parsed("(a:+.5)", {{"a", 0.5}});
  expect_parsed("(a:5.)", {{"a", 5.0}});
  expect_parsed("(a:-1)", {{"a", -1.0}});
  // Python's `\d` and float() take any Unicode decimal digit (Arabic-Indic 1.5 here).
  expect_parsed("(a:\u0661.\u0665)", {{"a", 1.5}});
  // A weight with no open "(" is text, whole.
  expect_parsed("x:1.5) y", {{"x:1.5) y", 1.0}});
  expect_parsed("[a:1.5)", {{"a:1.5)", 1 / 1.1}});
  expect_parsed("a: b", {{"a: b", 1.0}});
}

TEST(ParsePromptAttention, UnparseableWeightIsPlainTextWhereA1111Raises) {
  // Python's float("1.2.3") raises; kiln reads the ':' as plain text and ")" closes at 1.1.
  expect_parsed("(a:1.2.3)", {{"a:1.2.3", 1.1}});
  expect_parsed("(a:.)", {{"a:.", 1.1}});
}

TEST(ParsePromptAttention, EscapesAndStrayBrackets) {
  expect_parsed("\\\\(x)", {{"\\", 1.0}, {"x", 1.1}});  // "\\" is a literal backslash
  expect_parsed("a\\", {{"a", 1.0}});                   // a lone backslash vanishes
  expect_parsed("a\\b", {{"ab", 1.0}});
  expect_parsed("a) b] c", {{"a) b] c", 1.0}});
  expect_parsed("((a)", {{"a", 1.2100000000000002}});
}

TEST(ParsePromptAttention, EmptyPrompt) {
  expect_parsed("", {{"", 1.0}});
  expect_parsed("()", {{"", 1.0}});
}

TEST(ParsePromptAttention, Break) {
  expect_parsed("a BREAK b", {{"a", 1.0}, {"BREAK", kBreakWeight}, {"b", 1.0}});
  expect_parsed("BREAK", {{"", 1.0}, {"BREAK", kBreakWeight}, {"", 1.0}});
  expect_parsed("a\nBREAK\nb", {{"a", 1.0}, {"BREAK", kBreakWeight}, {"b", 1.0}});
  expect_parsed(",BREAK,", {{",", 1.0}, {"BREAK", kBreakWeight}, {",", 1.0}});
  // `\b` needs a non-word neighbour.
  expect_parsed("aBREAK b", {{"aBREAK b", 1.0}});
  expect_parsed("a BREAK_", {{"a BREAK_", 1.0}});
  // Python's `\w` and `\s` are Unicode: a CJK letter is a word character, U+3000 a space.
  expect_parsed("\u732bBREAK\u72ac", {{"\u732bBREAK\u72ac", 1.0}});
  expect_parsed("\u732b\u3000BREAK \u72ac", {{"\u732b", 1.0}, {"BREAK", kBreakWeight}, {"\u72ac", 1.0}});
  // Inside brackets the marker's weight is multiplied too, so it is no longer a BREAK.
  expect_parsed("(a BREAK b)", {{"a", 1.1}, {"BREAK", -1.1}, {"b", 1.1}});
}

// ---------------------------------------------------------------------------------------------
// chunk_prompt

TEST(ChunkPrompt, PlainPromptIsOneSdChunk) {
  const auto chunks = kiln::chunk_prompt(tokenizer(), "a photo of a red circle");
  ASSERT_EQ(chunks.size(), 1u);
  // The ids transformers gives (tests/golden/tokenizer.json, case "basic").
  const std::vector<int64_t> head = {49406, 320, 1125, 539, 320, 736, 7117, 49407};
  ASSERT_EQ(chunks[0].ids.size(), 77u);
  EXPECT_EQ(std::vector<int64_t>(chunks[0].ids.begin(), chunks[0].ids.begin() + 8), head);
  EXPECT_EQ(chunks[0].ids, tokenizer().encode_sd("a photo of a red circle"));
  EXPECT_EQ(chunks[0].weights, std::vector<float>(77, 1.0f));
}

TEST(ChunkPrompt, EmphasisWeightsOnlyItsTokens) {
  const int64_t red = single_token("red");
  const int64_t circle = single_token("circle");
  expect_chunks(kiln::chunk_prompt(tokenizer(), "(red:1.5) circle"), {framed({red, circle}, {1.5f, 1.0f})});
  expect_chunks(kiln::chunk_prompt(tokenizer(), "[red] circle"),
                {framed({red, circle}, {static_cast<float>(1 / 1.1), 1.0f})});
}

TEST(ChunkPrompt, EmphasisOffKeepsBracketsAsText) {
  const std::string prompt = "(red:1.5) circle BREAK x";
  const std::vector<int64_t> ids = tokenizer().encode(prompt);
  ASSERT_NE(std::find(ids.begin(), ids.end(), *tokenizer().token_to_id("(</w>")), ids.end());
  ChunkOptions options;
  options.emphasis = false;
  expect_chunks(kiln::chunk_prompt(tokenizer(), prompt, options), {framed(ids)});
}

TEST(ChunkPrompt, EmptyPromptIsOneChunkOfPadding) {
  std::vector<int64_t> expected(77, kEos);
  expected[0] = kBos;
  const auto chunks = kiln::chunk_prompt(tokenizer(), "");
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].ids, expected);
  EXPECT_EQ(chunks[0].weights, std::vector<float>(77, 1.0f));
}

TEST(ChunkPrompt, LongPromptSplitsAt75Tokens) {
  const int64_t cat = single_token("cat");
  ASSERT_EQ(tokenizer().encode(repeat("cat", 80)), std::vector<int64_t>(80, cat));
  expect_chunks(kiln::chunk_prompt(tokenizer(), repeat("cat", 80)),
                {framed(std::vector<int64_t>(75, cat)), framed(std::vector<int64_t>(5, cat))});
  // Exactly full chunks leave no empty chunk behind.
  expect_chunks(kiln::chunk_prompt(tokenizer(), repeat("cat", 75)), {framed(std::vector<int64_t>(75, cat))});
  expect_chunks(kiln::chunk_prompt(tokenizer(), repeat("cat", 150)),
                {framed(std::vector<int64_t>(75, cat)), framed(std::vector<int64_t>(75, cat))});
}

// 70 cats, a comma at chunk position 70, then 8 dogs: 4 dogs fit after the comma, the 5th does not.
class CommaBackoff : public ::testing::Test {
 protected:
  void SetUp() override {
    cat = single_token("cat");
    dog = single_token("dog");
    comma = single_token(",");
    ASSERT_EQ(comma, *tokenizer().token_to_id(",</w>"));
    prompt = repeat("cat", 70) + ", " + repeat("dog", 8);
    std::vector<int64_t> ids(70, cat);
    ids.push_back(comma);
    ids.insert(ids.end(), 8, dog);
    ASSERT_EQ(tokenizer().encode(prompt), ids);
  }
  int64_t cat = 0, dog = 0, comma = 0;
  std::string prompt;
};

TEST_F(CommaBackoff, MovesThePhraseAfterTheCommaToTheNextChunk) {
  std::vector<int64_t> first(70, cat);
  first.push_back(comma);  // then EOS padding where the 4 dogs were
  expect_chunks(kiln::chunk_prompt(tokenizer(), prompt),
                {framed(first), framed(std::vector<int64_t>(8, dog))});
}

TEST_F(CommaBackoff, ZeroBacktrackTurnsItOff) {
  ChunkOptions options;
  options.comma_padding_backtrack = 0;
  std::vector<int64_t> first(70, cat);
  first.push_back(comma);
  first.insert(first.end(), 4, dog);
  expect_chunks(kiln::chunk_prompt(tokenizer(), prompt, options),
                {framed(first), framed(std::vector<int64_t>(4, dog))});
}

TEST_F(CommaBackoff, CommaFartherThanBacktrackStays) {
  ChunkOptions options;
  options.comma_padding_backtrack = 4;  // the comma is 5 tokens back from the full chunk's end
  std::vector<int64_t> first(70, cat);
  first.push_back(comma);
  first.insert(first.end(), 4, dog);
  expect_chunks(kiln::chunk_prompt(tokenizer(), prompt, options),
                {framed(first), framed(std::vector<int64_t>(4, dog))});
  options.comma_padding_backtrack = 5;
  EXPECT_EQ(kiln::chunk_prompt(tokenizer(), prompt, options)[1].ids,
            framed(std::vector<int64_t>(8, dog)).ids);
}

TEST_F(CommaBackoff, MovedTokensKeepTheirWeights) {
  const std::string weighted =
      repeat("cat", 70) + ", " + repeat("dog", 2) + " (" + repeat("dog", 6) + ":1.25)";
  std::vector<int64_t> first(70, cat);
  first.push_back(comma);
  expect_chunks(kiln::chunk_prompt(tokenizer(), weighted),
                {framed(first),
                 framed(std::vector<int64_t>(8, dog), {1, 1, 1.25f, 1.25f, 1.25f, 1.25f, 1.25f, 1.25f})});
}

TEST(ChunkPrompt, BreakStartsANewChunk) {
  const std::vector<int64_t> a_cat = tokenizer().encode("a cat");
  const std::vector<int64_t> a_dog = tokenizer().encode("a dog");
  expect_chunks(kiln::chunk_prompt(tokenizer(), "a cat BREAK a dog"), {framed(a_cat), framed(a_dog)});
  // A leading BREAK closes the (empty) first chunk.
  expect_chunks(kiln::chunk_prompt(tokenizer(), "BREAK a dog"), {framed({}), framed(a_dog)});
  // Inside brackets it is the word "break" at weight -1.1.
  const int64_t brk = single_token("BREAK");
  const int64_t a = single_token("a");
  const int64_t b = single_token("b");
  const float w = static_cast<float>(1.1);
  expect_chunks(kiln::chunk_prompt(tokenizer(), "(a BREAK b)"),
                {framed({a, brk, b}, {w, static_cast<float>(-1.1), w})});
}

// Found by fuzzing: a weight beyond float32's range (weights are digits and dots, so 40 nines) would
// scale an embedding by inf (NaN pictures).
TEST(ChunkPrompt, AWeightBeyondFloatRangeIsRefused) {
  try {
    kiln::chunk_prompt(tokenizer(), "a (red:" + std::string(40, '9') + ") circle");  // 1e40
    FAIL() << "no error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompt weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  EXPECT_EQ(kiln::chunk_prompt(tokenizer(), "a (red:3" + std::string(38, '0') + ") circle").front().weights[2],
            3e38f);
  // Without emphasis the weights are not used at all.
  kiln::ChunkOptions plain;
  plain.emphasis = false;
  EXPECT_EQ(kiln::chunk_prompt(tokenizer(), "a (red:" + std::string(40, '9') + ") circle", plain).size(), 1u);
}

}  // namespace
