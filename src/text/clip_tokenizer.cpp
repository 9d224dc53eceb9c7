// CLIP BPE tokenizer: ftfy-style text repair, HF's pre-tokenizer regex over code points, byte-level BPE.
#include "text/clip_tokenizer.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <climits>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "util/error.h"

extern "C" {
extern const char kiln_clip_merges_begin[];
extern const char kiln_clip_merges_end[];
}

namespace kiln {
namespace {

// ---------------------------------------------------------------------------------------------
// UTF-8 <-> code points

// Invalid input becomes U+FFFD, one per maximal ill-formed subpart (what CPython's
// `bytes.decode("utf-8", "replace")` does).
std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    int len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    char32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ok = true;
    for (int k = 1; k < len; ++k, ++j) {
      const unsigned b = j < n ? p[j] : 0;
      const unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (j >= n || b < l || b > h) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (b & 0x3F);
    }
    out.push_back(ok ? cp : char32_t{0xFFFD});
    i = j;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

icu::UnicodeString to_icu(std::u32string_view s) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()),
                                       static_cast<int32_t>(s.size()));
}

std::u32string from_icu(const icu::UnicodeString& u) {
  std::u32string out(static_cast<size_t>(u.countChar32()), U'\0');
  UErrorCode status = U_ZERO_ERROR;
  u.toUTF32(reinterpret_cast<UChar32*>(out.data()), static_cast<int32_t>(out.size()), status);
  if (U_FAILURE(status) && status != U_STRING_NOT_TERMINATED_WARNING) {
    throw Error(std::string("CLIPTokenizer: ICU UTF-32 conversion failed: ") + u_errorName(status));
  }
  return out;
}

std::u32string icu_normalize(std::u32string_view s, bool nfkc) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm =
      nfkc ? icu::Normalizer2::getNFKCInstance(status) : icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) throw Error(std::string("CLIPTokenizer: ICU normalizer: ") + u_errorName(status));
  const icu::UnicodeString in = to_icu(s);
  if (norm->isNormalized(in, status) && U_SUCCESS(status)) return std::u32string(s);
  status = U_ZERO_ERROR;
  const icu::UnicodeString out = norm->normalize(in, status);
  if (U_FAILURE(status)) throw Error(std::string("CLIPTokenizer: ICU normalize: ") + u_errorName(status));
  return from_icu(out);
}

// Python's str.lower(): full lowercase mappings with the final-sigma context, as ICU's root locale.
std::u32string python_lower(std::u32string_view s) {
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x80; })) {
    std::u32string out(s);
    for (char32_t& c : out)
      if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
    return out;
  }
  icu::UnicodeString u = to_icu(s);
  u.toLower(icu::Locale::getRoot());
  return from_icu(u);
}

// Python's str.isspace() and the `regex` module's \s (Unicode White_Space): they differ only on
// U+001C..U+001F, which ftfy removes before either is consulted.
bool is_regex_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }
bool is_py_space(char32_t c) { return (c >= 0x1C && c <= 0x1F) || is_regex_space(c); }
bool is_letter(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; }
bool is_number(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }
// With IGNORECASE the `regex` module matches U+0345 COMBINING GREEK YPOGEGRAMMENI (which folds to
// iota) by none of [\p{L}], [\p{N}] and [^\s\p{L}\p{N}], so findall skips it like a space. It is
// the only assigned code point where the three classes disagree with the general category.
bool is_skipped_by_regex(char32_t c) { return c == 0x0345 || is_regex_space(c); }

// ---------------------------------------------------------------------------------------------
// Single-byte encodings behind mojibake

// Windows-1252 bytes 0x80..0x9F; 0 where the byte is undefined ("sloppy" decoding keeps U+0080+b).
constexpr std::array<char32_t, 32> kCp1252High = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

char32_t sloppy_cp1252_decode(unsigned char b) {
  if (b >= 0x80 && b <= 0x9F && kCp1252High[b - 0x80] != 0) return kCp1252High[b - 0x80];
  return b;
}

// Byte of `c` in ftfy's "sloppy-windows-1252" (Windows-1252 whose 5 holes decode as C1), or -1.
int sloppy_cp1252_byte(char32_t c) {
  if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return static_cast<int>(c);
  for (int i = 0; i < 32; ++i)
    if (kCp1252High[i] == c || (kCp1252High[i] == 0 && c == char32_t(0x80 + i))) return 0x80 + i;
  return -1;
}

// Byte of `c` when the text may mix Latin-1 and Windows-1252 readings (C1 chars stay themselves).
int mixed_byte(char32_t c) {
  if (c <= 0xFF) return static_cast<int>(c);
  return sloppy_cp1252_byte(c);
}

// Strict UTF-8 validity (no overlongs, surrogates or values past U+10FFFF), as Python's decoder.
bool valid_utf8(std::string_view bytes) {
  const std::u32string decoded = decode_utf8(bytes);
  if (std::find(decoded.begin(), decoded.end(), char32_t{0xFFFD}) == decoded.end()) return true;
  // U+FFFD may also be genuine: re-encode and compare.
  return encode_utf8(decoded) == bytes;
}

// Length of a complete UTF-8 multi-byte sequence starting at text[i] when every character is read
// back as its single-byte encoding, or 0. Two-byte sequences only count for the lead bytes whose
// mojibake is common and whose Latin-1 letters rarely precede a symbol in real text
// (Â Ã Ä Å: Latin; Î Ï: Greek; Ð Ñ: Cyrillic; × Ø Ù: Hebrew/Arabic). Leads such as É or Ô, which
// legitimately end capitalised words before quotes, are left alone.
size_t mojibake_sequence_length(std::u32string_view text, size_t i) {
  const int lead = mixed_byte(text[i]);
  if (lead < 0xC2 || lead > 0xF4) return 0;
  size_t len = 0;
  int lo = 0x80, hi = 0xBF;
  if (lead <= 0xDF) {
    static constexpr std::array<int, 11> kLeads = {0xC2, 0xC3, 0xC4, 0xC5, 0xCE, 0xCF,
                                                   0xD0, 0xD1, 0xD7, 0xD8, 0xD9};
    if (std::find(kLeads.begin(), kLeads.end(), lead) == kLeads.end()) return 0;
    // A letter before a no-break space is ordinary text ("Ñ\u00A0"); only "Â\u00A0" (NBSP) and
    // "Ã\u00A0" (à) are common enough as mojibake to count.
    if (i + 1 < text.size() && text[i + 1] == 0xA0 && lead != 0xC2 && lead != 0xC3) return 0;
    len = 2;
  } else if (lead <= 0xEF) {
    len = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else {
    len = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  }
  if (i + len > text.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const int b = mixed_byte(text[i + k]);
    const int l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return 0;
  }
  return len;
}

bool is_c1(char32_t c) { return c >= 0x80 && c <= 0x9F; }

// kiln's stand-in for ftfy's `is_bad` badness heuristic: C1 controls, or a complete UTF-8
// sequence spelled in Latin-1/Windows-1252 characters.
bool looks_like_mojibake(std::u32string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (is_c1(text[i]) || mojibake_sequence_length(text, i) > 0) return true;
  }
  return false;
}

std::u32string fix_c1_controls(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out)
    if (is_c1(c)) c = sloppy_cp1252_decode(static_cast<unsigned char>(c));
  return out;
}

// The whole text read back as bytes in one encoding; nullopt when some character has no byte.
std::optional<std::string> encode_single_byte(std::u32string_view text, bool latin1) {
  std::string bytes;
  bytes.reserve(text.size());
  for (char32_t c : text) {
    const int b = latin1 ? (c <= 0xFF ? static_cast<int>(c) : -1) : sloppy_cp1252_byte(c);
    if (b < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

// One step of ftfy's fix_encoding, for UTF-8 that was decoded as Latin-1 or Windows-1252.
std::u32string fix_encoding_step(std::u32string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; }) ||
      !looks_like_mojibake(text)) {
    return std::u32string(text);
  }
  // The whole text re-encodes to valid UTF-8: the common, unambiguous case.
  for (bool latin1 : {true, false}) {
    if (auto bytes = encode_single_byte(text, latin1)) {
      if (valid_utf8(*bytes)) return decode_utf8(*bytes);
    }
  }
  // Mojibake mixed with correct text: fix each sequence in isolation.
  std::u32string out;
  out.reserve(text.size());
  bool changed = false;
  for (size_t i = 0; i < text.size();) {
    const size_t len = mojibake_sequence_length(text, i);
    if (len == 0) {
      out.push_back(text[i++]);
      continue;
    }
    std::string bytes;
    for (size_t k = 0; k < len; ++k) bytes.push_back(static_cast<char>(mixed_byte(text[i + k])));
    out += decode_utf8(bytes);
    changed = true;
    i += len;
  }
  if (changed) return out;
  // Remaining C1 controls were meant as Windows-1252.
  return fix_c1_controls(text);
}

std::u32string fix_encoding(std::u32string_view text) {
  std::u32string cur(text);
  for (int iter = 0; iter < 16; ++iter) {
    std::u32string next = fix_encoding_step(cur);
    if (next == cur) break;
    cur = std::move(next);
  }
  return cur;
}

// ---------------------------------------------------------------------------------------------
// HTML entities (ftfy.fixes.unescape_html)

struct Entity {
  const char* name;   // without '&' and ';'
  const char* value;  // UTF-8
};

// The HTML 4 named entities plus &apos;, and the upper-case spellings ftfy also accepts for
// all-lower-case names (HTML5's own upper-case ones where they exist, else the value upper-cased).
// Generated from Python's html.entities with ftfy's rule; sorted by name (byte order).
// clang-format off
constexpr Entity kEntities[] = {
    {"AACUTE", "\u00C1"}, {"ACIRC", "\u00C2"}, {"ACUTE", "\u00B4"}, {"AELIG", "\u00C6"},
    {"AElig", "\u00C6"}, {"AGRAVE", "\u00C0"}, {"ALEFSYM", "\u2135"}, {"ALPHA", "\u0391"}, {"AMP", "&"},
    {"AND", "\u2227"}, {"ANG", "\u2220"}, {"APOS", "'"}, {"ARING", "\u00C5"}, {"ASYMP", "\u2248"},
    {"ATILDE", "\u00C3"}, {"AUML", "\u00C4"}, {"Aacute", "\u00C1"}, {"Acirc", "\u00C2"},
    {"Agrave", "\u00C0"}, {"Alpha", "\u0391"}, {"Aring", "\u00C5"}, {"Atilde", "\u00C3"},
    {"Auml", "\u00C4"}, {"BDQUO", "\u201E"}, {"BETA", "\u0392"}, {"BRVBAR", "\u00A6"}, {"BULL", "\u2022"},
    {"Beta", "\u0392"}, {"CAP", "\u2229"}, {"CCEDIL", "\u00C7"}, {"CEDIL", "\u00B8"}, {"CENT", "\u00A2"},
    {"CHI", "\u03A7"}, {"CIRC", "\u02C6"}, {"CLUBS", "\u2663"}, {"CONG", "\u2245"}, {"COPY", "\u00A9"},
    {"CRARR", "\u21B5"}, {"CUP", "\u222A"}, {"CURREN", "\u00A4"}, {"Ccedil", "\u00C7"}, {"Chi", "\u03A7"},
    {"DAGGER", "\u2020"}, {"DARR", "\u2193"}, {"DEG", "\u00B0"}, {"DELTA", "\u0394"}, {"DIAMS", "\u2666"},
    {"DIVIDE", "\u00F7"}, {"Dagger", "\u2021"}, {"Delta", "\u0394"}, {"EACUTE", "\u00C9"},
    {"ECIRC", "\u00CA"}, {"EGRAVE", "\u00C8"}, {"EMPTY", "\u2205"}, {"EMSP", "\u2003"}, {"ENSP", "\u2002"},
    {"EPSILON", "\u0395"}, {"EQUIV", "\u2261"}, {"ETA", "\u0397"}, {"ETH", "\u00D0"}, {"EUML", "\u00CB"},
    {"EURO", "\u20AC"}, {"EXIST", "\u2203"}, {"Eacute", "\u00C9"}, {"Ecirc", "\u00CA"},
    {"Egrave", "\u00C8"}, {"Epsilon", "\u0395"}, {"Eta", "\u0397"}, {"Euml", "\u00CB"}, {"FNOF", "\u0191"},
    {"FORALL", "\u2200"}, {"FRAC12", "\u00BD"}, {"FRAC14", "\u00BC"}, {"FRAC34", "\u00BE"},
    {"FRASL", "\u2044"}, {"GAMMA", "\u0393"}, {"GE", "\u2265"}, {"GT", ">"}, {"Gamma", "\u0393"},
    {"HARR", "\u2194"}, {"HEARTS", "\u2665"}, {"HELLIP", "\u2026"}, {"IACUTE", "\u00CD"},
    {"ICIRC", "\u00CE"}, {"IEXCL", "\u00A1"}, {"IGRAVE", "\u00CC"}, {"IMAGE", "\u2111"},
    {"INFIN", "\u221E"}, {"INT", "\u222B"}, {"IOTA", "\u0399"}, {"IQUEST", "\u00BF"}, {"ISIN", "\u2208"},
    {"IUML", "\u00CF"}, {"Iacute", "\u00CD"}, {"Icirc", "\u00CE"}, {"Igrave", "\u00CC"},
    {"Iota", "\u0399"}, {"Iuml", "\u00CF"}, {"KAPPA", "\u039A"}, {"Kappa", "\u039A"}, {"LAMBDA", "\u039B"},
    {"LANG", "\u27E8"}, {"LAQUO", "\u00AB"}, {"LARR", "\u2190"}, {"LCEIL", "\u2308"}, {"LDQUO", "\u201C"},
    {"LE", "\u2264"}, {"LFLOOR", "\u230A"}, {"LOWAST", "\u2217"}, {"LOZ", "\u25CA"}, {"LRM", "\u200E"},
    {"LSAQUO", "\u2039"}, {"LSQUO", "\u2018"}, {"LT", "<"}, {"Lambda", "\u039B"}, {"MACR", "\u00AF"},
    {"MDASH", "\u2014"}, {"MICRO", "\u039C"}, {"MIDDOT", "\u00B7"}, {"MINUS", "\u2212"}, {"MU", "\u039C"},
    {"Mu", "\u039C"}, {"NABLA", "\u2207"}, {"NBSP", "\u00A0"}, {"NDASH", "\u2013"}, {"NE", "\u2260"},
    {"NI", "\u220B"}, {"NOT", "\u00AC"}, {"NOTIN", "\u2209"}, {"NSUB", "\u2284"}, {"NTILDE", "\u00D1"},
    {"NU", "\u039D"}, {"Ntilde", "\u00D1"}, {"Nu", "\u039D"}, {"OACUTE", "\u00D3"}, {"OCIRC", "\u00D4"},
    {"OELIG", "\u0152"}, {"OElig", "\u0152"}, {"OGRAVE", "\u00D2"}, {"OLINE", "\u203E"},
    {"OMEGA", "\u03A9"}, {"OMICRON", "\u039F"}, {"OPLUS", "\u2295"}, {"OR", "\u2228"}, {"ORDF", "\u00AA"},
    {"ORDM", "\u00BA"}, {"OSLASH", "\u00D8"}, {"OTILDE", "\u00D5"}, {"OTIMES", "\u2297"},
    {"OUML", "\u00D6"}, {"Oacute", "\u00D3"}, {"Ocirc", "\u00D4"}, {"Ograve", "\u00D2"},
    {"Omega", "\u03A9"}, {"Omicron", "\u039F"}, {"Oslash", "\u00D8"}, {"Otilde", "\u00D5"},
    {"Ouml", "\u00D6"}, {"PARA", "\u00B6"}, {"PART", "\u2202"}, {"PERMIL", "\u2030"}, {"PERP", "\u22A5"},
    {"PHI", "\u03A6"}, {"PI", "\u03A0"}, {"PIV", "\u03A0"}, {"PLUSMN", "\u00B1"}, {"POUND", "\u00A3"},
    {"PRIME", "\u2032"}, {"PROD", "\u220F"}, {"PROP", "\u221D"}, {"PSI", "\u03A8"}, {"Phi", "\u03A6"},
    {"Pi", "\u03A0"}, {"Prime", "\u2033"}, {"Psi", "\u03A8"}, {"QUOT", "\""}, {"RADIC", "\u221A"},
    {"RANG", "\u27E9"}, {"RAQUO", "\u00BB"}, {"RARR", "\u2192"}, {"RCEIL", "\u2309"}, {"RDQUO", "\u201D"},
    {"REAL", "\u211C"}, {"REG", "\u00AE"}, {"RFLOOR", "\u230B"}, {"RHO", "\u03A1"}, {"RLM", "\u200F"},
    {"RSAQUO", "\u203A"}, {"RSQUO", "\u2019"}, {"Rho", "\u03A1"}, {"SBQUO", "\u201A"},
    {"SCARON", "\u0160"}, {"SDOT", "\u22C5"}, {"SECT", "\u00A7"}, {"SHY", "\u00AD"}, {"SIGMA", "\u03A3"},
    {"SIGMAF", "\u03A3"}, {"SIM", "\u223C"}, {"SPADES", "\u2660"}, {"SUB", "\u2282"}, {"SUBE", "\u2286"},
    {"SUM", "\u2211"}, {"SUP1", "\u00B9"}, {"SUP2", "\u00B2"}, {"SUP3", "\u00B3"}, {"SUP", "\u2283"},
    {"SUPE", "\u2287"}, {"SZLIG", "SS"}, {"Scaron", "\u0160"}, {"Sigma", "\u03A3"}, {"TAU", "\u03A4"},
    {"THERE4", "\u2234"}, {"THETA", "\u0398"}, {"THETASYM", "\u0398"}, {"THINSP", "\u2009"},
    {"THORN", "\u00DE"}, {"TILDE", "\u02DC"}, {"TIMES", "\u00D7"}, {"TRADE", "\u2122"}, {"Tau", "\u03A4"},
    {"Theta", "\u0398"}, {"UACUTE", "\u00DA"}, {"UARR", "\u2191"}, {"UCIRC", "\u00DB"},
    {"UGRAVE", "\u00D9"}, {"UML", "\u00A8"}, {"UPSIH", "\u03D2"}, {"UPSILON", "\u03A5"},
    {"UUML", "\u00DC"}, {"Uacute", "\u00DA"}, {"Ucirc", "\u00DB"}, {"Ugrave", "\u00D9"},
    {"Upsilon", "\u03A5"}, {"Uuml", "\u00DC"}, {"WEIERP", "\u2118"}, {"XI", "\u039E"}, {"Xi", "\u039E"},
    {"YACUTE", "\u00DD"}, {"YEN", "\u00A5"}, {"YUML", "\u0178"}, {"Yacute", "\u00DD"}, {"Yuml", "\u0178"},
    {"ZETA", "\u0396"}, {"ZWJ", "\u200D"}, {"ZWNJ", "\u200C"}, {"Zeta", "\u0396"}, {"aacute", "\u00E1"},
    {"acirc", "\u00E2"}, {"acute", "\u00B4"}, {"aelig", "\u00E6"}, {"agrave", "\u00E0"},
    {"alefsym", "\u2135"}, {"alpha", "\u03B1"}, {"amp", "&"}, {"and", "\u2227"}, {"ang", "\u2220"},
    {"apos", "'"}, {"aring", "\u00E5"}, {"asymp", "\u2248"}, {"atilde", "\u00E3"}, {"auml", "\u00E4"},
    {"bdquo", "\u201E"}, {"beta", "\u03B2"}, {"brvbar", "\u00A6"}, {"bull", "\u2022"}, {"cap", "\u2229"},
    {"ccedil", "\u00E7"}, {"cedil", "\u00B8"}, {"cent", "\u00A2"}, {"chi", "\u03C7"}, {"circ", "\u02C6"},
    {"clubs", "\u2663"}, {"cong", "\u2245"}, {"copy", "\u00A9"}, {"crarr", "\u21B5"}, {"cup", "\u222A"},
    {"curren", "\u00A4"}, {"dArr", "\u21D3"}, {"dagger", "\u2020"}, {"darr", "\u2193"}, {"deg", "\u00B0"},
    {"delta", "\u03B4"}, {"diams", "\u2666"}, {"divide", "\u00F7"}, {"eacute", "\u00E9"},
    {"ecirc", "\u00EA"}, {"egrave", "\u00E8"}, {"empty", "\u2205"}, {"emsp", "\u2003"}, {"ensp", "\u2002"},
    {"epsilon", "\u03B5"}, {"equiv", "\u2261"}, {"eta", "\u03B7"}, {"eth", "\u00F0"}, {"euml", "\u00EB"},
    {"euro", "\u20AC"}, {"exist", "\u2203"}, {"fnof", "\u0192"}, {"forall", "\u2200"},
    {"frac12", "\u00BD"}, {"frac14", "\u00BC"}, {"frac34", "\u00BE"}, {"frasl", "\u2044"},
    {"gamma", "\u03B3"}, {"ge", "\u2265"}, {"gt", ">"}, {"hArr", "\u21D4"}, {"harr", "\u2194"},
    {"hearts", "\u2665"}, {"hellip", "\u2026"}, {"iacute", "\u00ED"}, {"icirc", "\u00EE"},
    {"iexcl", "\u00A1"}, {"igrave", "\u00EC"}, {"image", "\u2111"}, {"infin", "\u221E"}, {"int", "\u222B"},
    {"iota", "\u03B9"}, {"iquest", "\u00BF"}, {"isin", "\u2208"}, {"iuml", "\u00EF"}, {"kappa", "\u03BA"},
    {"lArr", "\u21D0"}, {"lambda", "\u03BB"}, {"lang", "\u27E8"}, {"laquo", "\u00AB"}, {"larr", "\u2190"},
    {"lceil", "\u2308"}, {"ldquo", "\u201C"}, {"le", "\u2264"}, {"lfloor", "\u230A"}, {"lowast", "\u2217"},
    {"loz", "\u25CA"}, {"lrm", "\u200E"}, {"lsaquo", "\u2039"}, {"lsquo", "\u2018"}, {"lt", "<"},
    {"macr", "\u00AF"}, {"mdash", "\u2014"}, {"micro", "\u00B5"}, {"middot", "\u00B7"},
    {"minus", "\u2212"}, {"mu", "\u03BC"}, {"nabla", "\u2207"}, {"nbsp", "\u00A0"}, {"ndash", "\u2013"},
    {"ne", "\u2260"}, {"ni", "\u220B"}, {"not", "\u00AC"}, {"notin", "\u2209"}, {"nsub", "\u2284"},
    {"ntilde", "\u00F1"}, {"nu", "\u03BD"}, {"oacute", "\u00F3"}, {"ocirc", "\u00F4"}, {"oelig", "\u0153"},
    {"ograve", "\u00F2"}, {"oline", "\u203E"}, {"omega", "\u03C9"}, {"omicron", "\u03BF"},
    {"oplus", "\u2295"}, {"or", "\u2228"}, {"ordf", "\u00AA"}, {"ordm", "\u00BA"}, {"oslash", "\u00F8"},
    {"otilde", "\u00F5"}, {"otimes", "\u2297"}, {"ouml", "\u00F6"}, {"para", "\u00B6"}, {"part", "\u2202"},
    {"permil", "\u2030"}, {"perp", "\u22A5"}, {"phi", "\u03C6"}, {"pi", "\u03C0"}, {"piv", "\u03D6"},
    {"plusmn", "\u00B1"}, {"pound", "\u00A3"}, {"prime", "\u2032"}, {"prod", "\u220F"}, {"prop", "\u221D"},
    {"psi", "\u03C8"}, {"quot", "\""}, {"rArr", "\u21D2"}, {"radic", "\u221A"}, {"rang", "\u27E9"},
    {"raquo", "\u00BB"}, {"rarr", "\u2192"}, {"rceil", "\u2309"}, {"rdquo", "\u201D"}, {"real", "\u211C"},
    {"reg", "\u00AE"}, {"rfloor", "\u230B"}, {"rho", "\u03C1"}, {"rlm", "\u200F"}, {"rsaquo", "\u203A"},
    {"rsquo", "\u2019"}, {"sbquo", "\u201A"}, {"scaron", "\u0161"}, {"sdot", "\u22C5"}, {"sect", "\u00A7"},
    {"shy", "\u00AD"}, {"sigma", "\u03C3"}, {"sigmaf", "\u03C2"}, {"sim", "\u223C"}, {"spades", "\u2660"},
    {"sub", "\u2282"}, {"sube", "\u2286"}, {"sum", "\u2211"}, {"sup1", "\u00B9"}, {"sup2", "\u00B2"},
    {"sup3", "\u00B3"}, {"sup", "\u2283"}, {"supe", "\u2287"}, {"szlig", "\u00DF"}, {"tau", "\u03C4"},
    {"there4", "\u2234"}, {"theta", "\u03B8"}, {"thetasym", "\u03D1"}, {"thinsp", "\u2009"},
    {"thorn", "\u00FE"}, {"tilde", "\u02DC"}, {"times", "\u00D7"}, {"trade", "\u2122"}, {"uArr", "\u21D1"},
    {"uacute", "\u00FA"}, {"uarr", "\u2191"}, {"ucirc", "\u00FB"}, {"ugrave", "\u00F9"}, {"uml", "\u00A8"},
    {"upsih", "\u03D2"}, {"upsilon", "\u03C5"}, {"uuml", "\u00FC"}, {"weierp", "\u2118"}, {"xi", "\u03BE"},
    {"yacute", "\u00FD"}, {"yen", "\u00A5"}, {"yuml", "\u00FF"}, {"zeta", "\u03B6"}, {"zwj", "\u200D"},
    {"zwnj", "\u200C"},
};
// clang-format on

std::optional<std::string_view> lookup_entity(std::string_view name) {
  const auto* end = std::end(kEntities);
  const auto* it = std::lower_bound(std::begin(kEntities), end, name,
                                    [](const Entity& e, std::string_view n) { return e.name < n; });
  if (it != end && it->name == name) return std::string_view(it->value);
  return std::nullopt;
}

bool is_ascii_alnum(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Python's html.unescape of a numeric reference "&#...;" whose body is `digits` (base 10 or 16):
// nullopt when html.unescape would not consume the whole reference (ftfy then keeps it).
std::optional<std::u32string> numeric_charref(std::u32string_view body, int base) {
  if (body.empty()) return std::nullopt;
  uint64_t num = 0;
  for (char32_t c : body) {
    int d = -1;
    if (c >= '0' && c <= '9')
      d = static_cast<int>(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = static_cast<int>(c - 'a' + 10);
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = static_cast<int>(c - 'A' + 10);
    if (d < 0) return std::nullopt;
    num = std::min<uint64_t>(num * base + d, 0x7FFFFFFF);  // saturate: anything past U+10FFFF is one case
  }
  if (num == 0) return U"\uFFFD";
  if (num == 0x0D) return U"\r";
  if (num >= 0x80 && num <= 0x9F)
    return std::u32string(1, sloppy_cp1252_decode(static_cast<unsigned char>(num)));
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  const bool invalid = (num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) ||
                       (num >= 0x7F && num <= 0x9F) || (num >= 0xFDD0 && num <= 0xFDEF) ||
                       (num & 0xFFFE) == 0xFFFE;
  if (invalid) return U"";
  return std::u32string(1, static_cast<char32_t>(num));
}

// Replaces "&name;" and "&#...;" (ftfy's pattern `&#?[0-9A-Za-z]{1,24};`) left to right.
std::u32string unescape_html(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '&') {
      out.push_back(text[i++]);
      continue;
    }
    const bool numeric = i + 1 < text.size() && text[i + 1] == '#';
    size_t j = i + 1 + (numeric ? 1 : 0);
    while (j < text.size() && is_ascii_alnum(text[j])) ++j;
    const size_t body_len = j - i - 1 - (numeric ? 1 : 0);
    if (body_len < 1 || body_len > 24 || j >= text.size() || text[j] != ';') {
      out.push_back(text[i++]);
      continue;
    }
    const std::u32string_view body = text.substr(i + 1 + (numeric ? 1 : 0), body_len);
    std::optional<std::u32string> repl;
    if (numeric) {
      if (body[0] == 'x' || body[0] == 'X')
        repl = numeric_charref(body.substr(1), 16);
      else
        repl = numeric_charref(body, 10);
      // ftfy keeps the reference when the result contains ';' (html.unescape stopped early).
      if (repl && repl->find(U';') != std::u32string::npos) repl.reset();
    } else {
      std::string name;
      for (char32_t c : body) name.push_back(static_cast<char>(c));
      if (auto v = lookup_entity(name)) repl = decode_utf8(*v);
    }
    if (repl) {
      out += *repl;
    } else {
      out.append(text.substr(i, j + 1 - i));
    }
    i = j + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The other ftfy fixers

// ftfy's Latin ligatures (typographic ones, and the digraphs that are single code points).
// clang-format off
constexpr std::pair<char32_t, std::u32string_view> kLigatures[] = {
    {0x0132, U"IJ"}, {0x0133, U"ij"}, {0x0149, U"\u02BCn"}, {0x01C4, U"D\u017D"}, {0x01C5, U"D\u017E"},
    {0x01C6, U"d\u017E"}, {0x01C7, U"LJ"}, {0x01C8, U"Lj"}, {0x01C9, U"lj"}, {0x01CA, U"NJ"}, {0x01CB, U"Nj"},
    {0x01CC, U"nj"}, {0x01F1, U"DZ"}, {0x01F2, U"Dz"}, {0x01F3, U"dz"}, {0xFB00, U"ff"}, {0xFB01, U"fi"},
    {0xFB02, U"fl"}, {0xFB03, U"ffi"}, {0xFB04, U"ffl"}, {0xFB05, U"\u017Ft"}, {0xFB06, U"st"}};
// clang-format on

std::u32string fix_latin_ligatures(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    const auto* it = std::find_if(std::begin(kLigatures), std::end(kLigatures),
                                  [c](const auto& l) { return l.first == c; });
    if (it != std::end(kLigatures)) {
      out += it->second;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Full-width and half-width forms (U+FF01..U+FFEF) to their NFKC form; U+3000 to a space.
std::u32string fix_character_width(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0x3000) {
      out.push_back(U' ');
    } else if (c >= 0xFF01 && c <= 0xFFEF) {
      out += icu_normalize(std::u32string_view(&c, 1), /*nfkc=*/true);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::u32string uncurl_quotes(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
      c = U'\'';
    else if (c >= 0x201C && c <= 0x201F)
      c = U'"';
  }
  return out;
}

std::u32string fix_line_breaks(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == '\r') {
      out.push_back('\n');
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back('\n');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// ANSI terminal escapes: ESC '[' (digits | ';')* letter. Python's \d is any decimal digit.
std::u32string remove_terminal_escapes(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == '[') {
      size_t j = i + 2;
      while (j < text.size() &&
             (text[j] == ';' || u_charType(static_cast<UChar32>(text[j])) == U_DECIMAL_DIGIT_NUMBER)) {
        ++j;
      }
      if (j < text.size() && ((text[j] >= 'a' && text[j] <= 'z') || (text[j] >= 'A' && text[j] <= 'Z'))) {
        i = j + 1;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

std::u32string remove_control_chars(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text)
    if (!is_removed_control(c)) out.push_back(c);
  return out;
}

// ftfy.fix_and_explain on one segment: the fixers in ftfy's order, repeated until nothing changes.
std::u32string fix_segment(std::u32string text, bool unescape) {
  for (int iter = 0; iter < 16; ++iter) {
    const std::u32string orig = text;
    if (unescape) text = unescape_html(text);
    text = fix_encoding(text);
    text = fix_c1_controls(text);
    text = fix_latin_ligatures(text);
    text = fix_character_width(text);
    text = uncurl_quotes(text);
    text = fix_line_breaks(text);
    text = remove_terminal_escapes(text);
    text = remove_control_chars(text);
    text = icu_normalize(text, /*nfkc=*/false);
    if (text == orig) break;
  }
  return text;
}

// ftfy.fix_text: line by line (each line keeps its '\n'); HTML entities are decoded only until
// the first line that contains '<' (ftfy's "auto" setting then switches it off for the rest).
std::u32string ftfy_fix(std::u32string_view text) {
  constexpr size_t kMaxDecodeLength = 1000000;
  std::u32string out;
  out.reserve(text.size());
  bool unescape = true;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t brk = text.find(U'\n', pos);
    brk = brk == std::u32string_view::npos ? text.size() : brk + 1;
    if (brk - pos > kMaxDecodeLength) brk = pos + kMaxDecodeLength;
    const std::u32string_view segment = text.substr(pos, brk - pos);
    if (unescape && segment.find(U'<') != std::u32string_view::npos) unescape = false;
    out += fix_segment(std::u32string(segment), unescape);
    pos = brk;
  }
  return out;
}

// whitespace_clean (`\s+` -> " ", then str.strip()) followed by str.lower().
std::u32string clean_text(std::string_view utf8) {
  const std::u32string fixed = ftfy_fix(decode_utf8(utf8));
  std::u32string ws;
  ws.reserve(fixed.size());
  for (size_t i = 0; i < fixed.size();) {
    if (is_regex_space(fixed[i])) {
      while (i < fixed.size() && is_regex_space(fixed[i])) ++i;
      ws.push_back(U' ');
    } else {
      ws.push_back(fixed[i++]);
    }
  }
  size_t b = 0, e = ws.size();
  while (b < e && is_py_space(ws[b])) ++b;
  while (e > b && is_py_space(ws[e - 1])) --e;
  return python_lower(std::u32string_view(ws).substr(b, e - b));
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer: `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
// [^\s\p{L}\p{N}]+` with IGNORECASE, as findall: the first alternative that matches wins.

// IGNORECASE equality with an ASCII lower-case pattern character (the `regex` module also folds
// U+017F LONG S onto 's').
bool ci_equal(char32_t c, char p) {
  if (c == static_cast<char32_t>(p)) return true;
  if (p >= 'a' && p <= 'z' && c == static_cast<char32_t>(p - 'a' + 'A')) return true;
  return p == 's' && c == 0x017F;
}

size_t match_literal(std::u32string_view text, size_t i, std::string_view lit) {
  if (i + lit.size() > text.size()) return 0;
  for (size_t k = 0; k < lit.size(); ++k)
    if (!ci_equal(text[i + k], lit[k])) return 0;
  return lit.size();
}

std::vector<std::u32string_view> pre_tokenize(std::u32string_view text) {
  static constexpr std::string_view kLiterals[] = {
      "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::u32string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 0;
    for (std::string_view lit : kLiterals) {
      if ((len = match_literal(text, i, lit)) > 0) break;
    }
    if (len == 0) {
      const char32_t c = text[i];
      if (is_letter(c)) {
        len = 1;
        while (i + len < text.size() && is_letter(text[i + len])) ++len;
      } else if (is_number(c)) {
        len = 1;
      } else if (!is_skipped_by_regex(c)) {
        auto other = [](char32_t x) { return !is_skipped_by_regex(x) && !is_letter(x) && !is_number(x); };
        len = 1;
        while (i + len < text.size() && other(text[i + len])) ++len;
      }
    }
    if (len == 0) {
      ++i;  // whitespace (or U+0345): findall skips it
      continue;
    }
    out.push_back(text.substr(i, len));
    i += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Byte <-> unicode mapping of OpenAI's bytes_to_unicode, in its insertion order.

struct ByteMap {
  std::array<uint8_t, 256> order;     // byte at vocabulary position k
  std::array<char32_t, 256> to_char;  // byte -> code point
};

ByteMap make_byte_map() {
  ByteMap m{};
  int k = 0;
  std::array<bool, 256> printable{};
  for (int b = 0; b < 256; ++b) {
    printable[b] = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (printable[b]) {
      m.order[k++] = static_cast<uint8_t>(b);
      m.to_char[b] = static_cast<char32_t>(b);
    }
  }
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (!printable[b]) {
      m.order[k++] = static_cast<uint8_t>(b);
      m.to_char[b] = static_cast<char32_t>(256 + n++);
    }
  }
  return m;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_file_error(path, "read error");
  return ss.str();
}

// transformers: merges = text.strip().split("\n")[1 : 49152 - 256 - 2 + 1], each split on whitespace.
std::vector<std::pair<std::string, std::string>> parse_merges(std::string_view text,
                                                              const std::string& source) {
  constexpr size_t kMaxMerges = 49152 - 256 - 2;
  auto is_ws = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  while (!text.empty() && is_ws(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_ws(text.back())) text.remove_suffix(1);
  std::vector<std::pair<std::string, std::string>> merges;
  size_t pos = 0, line_no = 0;
  while (pos <= text.size() && merges.size() < kMaxMerges) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    ++line_no;
    pos = nl + 1;
    if (line_no == 1) {
      if (line.substr(0, 8) != "#version") {
        throw Error(source + ": not a BPE merges file (first line is not '#version: ...')");
      }
      if (nl == text.size()) break;
      continue;
    }
    std::vector<std::string_view> parts;
    size_t k = 0;
    while (k < line.size()) {
      while (k < line.size() && is_ws(line[k])) ++k;
      size_t s = k;
      while (k < line.size() && !is_ws(line[k])) ++k;
      if (k > s) parts.push_back(line.substr(s, k - s));
    }
    if (parts.size() != 2) {
      throw Error(source + ": line " + std::to_string(line_no) + " is not a merge pair \"a b\"");
    }
    merges.emplace_back(std::string(parts[0]), std::string(parts[1]));
    if (nl == text.size()) break;
  }
  if (merges.empty()) throw Error(source + ": no merges");
  return merges;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tables

struct CLIPTokenizer::Tables {
  std::vector<std::string> vocab;  // id -> token
  std::unordered_map<std::string, int32_t> vocab_index;
  // BPE symbols (interned strings: byte chars, byte chars + "</w>", merge results, specials).
  std::vector<std::string> sym_str;
  std::vector<int32_t> sym_vocab;  // symbol -> vocabulary id, or the unknown id
  std::unordered_map<std::string, int32_t> sym_index;
  std::array<int32_t, 256> byte_sym{}, byte_end_sym{};
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  std::unordered_map<uint64_t, Merge> merges;  // (left << 32 | right) -> rank, merged symbol
  std::array<std::string, 256> byte_utf8;      // bytes_to_unicode(b) as UTF-8
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  int32_t bos_sym = -1, eos_sym = -1;
  int64_t bos_id = 0, eos_id = 0;

  int32_t intern(const std::string& s) {
    auto [it, inserted] = sym_index.try_emplace(s, static_cast<int32_t>(sym_str.size()));
    if (inserted) sym_str.push_back(s);
    return it->second;
  }

  Tables(std::vector<std::string> vocab_in,
         const std::vector<std::pair<std::string, std::string>>& merge_list,
         const std::string& vocab_source) {
    vocab = std::move(vocab_in);
    vocab_index.reserve(vocab.size());
    for (size_t i = 0; i < vocab.size(); ++i) vocab_index.emplace(vocab[i], static_cast<int32_t>(i));
    auto special = [&](std::string_view tok) -> int64_t {
      auto it = vocab_index.find(std::string(tok));
      if (it == vocab_index.end()) throw Error(vocab_source + ": vocabulary lacks " + std::string(tok));
      return it->second;
    };
    bos_id = special(kBosToken);
    eos_id = special(kEosToken);

    const ByteMap bm = make_byte_map();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_utf8(s, bm.to_char[b]);
      byte_utf8[b] = s;
      char_to_byte.emplace(bm.to_char[b], static_cast<uint8_t>(b));
      byte_sym[b] = intern(s);
      byte_end_sym[b] = intern(s + "</w>");
    }
    bos_sym = intern(std::string(kBosToken));
    eos_sym = intern(std::string(kEosToken));
    merges.reserve(merge_list.size() * 2);
    for (size_t r = 0; r < merge_list.size(); ++r) {
      const auto& [a, b] = merge_list[r];
      const uint64_t key = (static_cast<uint64_t>(intern(a)) << 32) | static_cast<uint32_t>(intern(b));
      const int32_t result = intern(a + b);
      merges.try_emplace(key, Merge{static_cast<int32_t>(r), result});  // first occurrence ranks
    }
    // transformers maps tokens missing from the vocabulary to unk_token = <|endoftext|>.
    sym_vocab.resize(sym_str.size());
    for (size_t s = 0; s < sym_str.size(); ++s) {
      auto it = vocab_index.find(sym_str[s]);
      sym_vocab[s] = it == vocab_index.end() ? static_cast<int32_t>(eos_id) : it->second;
    }
  }
};

struct CLIPTokenizer::Cache {
  static constexpr size_t kMaxEntries = 1 << 16;  // bounded: cleared when full
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>> words;
};

CLIPTokenizer::CLIPTokenizer(std::shared_ptr<const Tables> tables)
    : tables_(std::move(tables)), cache_(std::make_unique<Cache>()) {}
CLIPTokenizer::CLIPTokenizer(const CLIPTokenizer& other)
    : tables_(other.tables_), cache_(std::make_unique<Cache>()) {}
CLIPTokenizer& CLIPTokenizer::operator=(const CLIPTokenizer& other) {
  if (this != &other) {
    tables_ = other.tables_;
    cache_ = std::make_unique<Cache>();
  }
  return *this;
}
CLIPTokenizer::CLIPTokenizer(CLIPTokenizer&&) noexcept = default;
CLIPTokenizer& CLIPTokenizer::operator=(CLIPTokenizer&&) noexcept = default;
CLIPTokenizer::~CLIPTokenizer() = default;

CLIPTokenizer CLIPTokenizer::from_embedded() {
  const std::string_view text(kiln_clip_merges_begin,
                              static_cast<size_t>(kiln_clip_merges_end - kiln_clip_merges_begin));
  const std::string source = "<embedded data/clip/merges.txt>";
  auto merges = parse_merges(text, source);
  // OpenAI's vocabulary: byte chars in bytes_to_unicode order, the same with "</w>", one entry per
  // merge, then the two special tokens.
  const ByteMap bm = make_byte_map();
  std::vector<std::string> vocab;
  vocab.reserve(512 + merges.size() + 2);
  for (int k = 0; k < 256; ++k) {
    std::string s;
    append_utf8(s, bm.to_char[bm.order[k]]);
    vocab.push_back(s);
  }
  for (int k = 0; k < 256; ++k) vocab.push_back(vocab[k] + "</w>");
  for (const auto& [a, b] : merges) vocab.push_back(a + b);
  vocab.emplace_back(kBosToken);
  vocab.emplace_back(kEosToken);
  return CLIPTokenizer(std::make_shared<const Tables>(std::move(vocab), merges, source));
}

CLIPTokenizer CLIPTokenizer::from_files(const std::filesystem::path& vocab_json,
                                        const std::filesystem::path& merges_txt) {
  const std::string vocab_text = read_file(vocab_json);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(vocab_text);
  } catch (const nlohmann::json::exception& e) {
    throw_file_error(vocab_json, std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object() || j.empty()) throw_file_error(vocab_json, "expected a JSON object {token: id}");
  std::vector<std::string> vocab(j.size());
  std::vector<bool> seen(j.size(), false);
  for (const auto& [token, id] : j.items()) {
    if (!id.is_number_integer())
      throw_file_error(vocab_json, "id of token '" + token + "' is not an integer");
    const int64_t v = id.get<int64_t>();
    if (v < 0 || v >= static_cast<int64_t>(vocab.size()) || seen[static_cast<size_t>(v)]) {
      throw_file_error(vocab_json, "ids are not a permutation of 0.." + std::to_string(vocab.size() - 1) +
                                       " (token '" + token + "' has id " + std::to_string(v) + ")");
    }
    seen[static_cast<size_t>(v)] = true;
    vocab[static_cast<size_t>(v)] = token;
  }
  const auto merges = parse_merges(read_file(merges_txt), merges_txt.string());
  return CLIPTokenizer(std::make_shared<const Tables>(std::move(vocab), merges, vocab_json.string()));
}

CLIPTokenizer CLIPTokenizer::from_folder(const std::filesystem::path& dir) {
  return from_files(dir / "vocab.json", dir / "merges.txt");
}

// ---------------------------------------------------------------------------------------------
// Encoding

void CLIPTokenizer::bpe(std::string_view word, std::vector<int32_t>& out) const {
  const Tables& t = *tables_;
  // transformers seeds its BPE cache with the special tokens: they map to themselves.
  if (word == kBosToken || word == kEosToken) {
    out.push_back(word == kBosToken ? t.bos_sym : t.eos_sym);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->words.find(std::string(word));
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> syms;
  syms.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    syms.push_back(i + 1 == word.size() ? t.byte_end_sym[b] : t.byte_sym[b]);
  }
  auto pair_key = [](int32_t a, int32_t b) {
    return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b);
  };
  // Merge the lowest-ranked adjacent pair everywhere (left to right), until none is mergeable.
  while (syms.size() > 1) {
    int32_t best_rank = INT32_MAX, left = -1, right = -1, merged = -1;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto it = t.merges.find(pair_key(syms[i], syms[i + 1]));
      if (it != t.merges.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        left = syms[i];
        right = syms[i + 1];
        merged = it->second.result;
      }
    }
    if (merged < 0) break;
    std::vector<int32_t> next;
    next.reserve(syms.size());
    for (size_t i = 0; i < syms.size();) {
      if (i + 1 < syms.size() && syms[i] == left && syms[i + 1] == right) {
        next.push_back(merged);
        i += 2;
      } else {
        next.push_back(syms[i++]);
      }
    }
    syms = std::move(next);
  }
  out.insert(out.end(), syms.begin(), syms.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= Cache::kMaxEntries) cache_->words.clear();
  cache_->words.emplace(std::string(word), std::move(syms));
}

void CLIPTokenizer::encode_chunk(std::string_view text, std::vector<int32_t>& out) const {
  const std::u32string cleaned = clean_text(text);
  std::string bytes;
  for (std::u32string_view piece : pre_tokenize(cleaned)) {
    bytes.clear();
    for (char32_t c : piece) append_utf8(bytes, c);
    bpe(bytes, out);
  }
}

// transformers first splits the raw text on the literal special tokens (its added-tokens trie);
// only the pieces between them are cleaned and BPE-encoded.
std::vector<int32_t> CLIPTokenizer::encode_tokens(std::string_view text) const {
  std::vector<int32_t> syms;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t b = text.find(kBosToken, pos), e = text.find(kEosToken, pos);
    const size_t hit = std::min(b, e);
    const std::string_view chunk = text.substr(pos, hit == std::string_view::npos ? text.npos : hit - pos);
    if (!chunk.empty()) encode_chunk(chunk, syms);
    if (hit == std::string_view::npos) break;
    syms.push_back(hit == b ? tables_->bos_sym : tables_->eos_sym);
    pos = hit + (hit == b ? kBosToken.size() : kEosToken.size());
  }
  return syms;
}

std::vector<int64_t> CLIPTokenizer::encode(std::string_view text) const {
  const std::vector<int32_t> syms = encode_tokens(text);
  std::vector<int64_t> ids;
  ids.reserve(syms.size());
  for (int32_t s : syms) ids.push_back(tables_->sym_vocab[static_cast<size_t>(s)]);
  return ids;
}

std::vector<std::string> CLIPTokenizer::tokens(std::string_view text) const {
  const std::vector<int32_t> syms = encode_tokens(text);
  std::vector<std::string> out;
  out.reserve(syms.size());
  for (int32_t s : syms) out.push_back(tables_->sym_str[static_cast<size_t>(s)]);
  return out;
}

std::vector<int64_t> CLIPTokenizer::encode_sd(std::string_view text, int64_t max_length) const {
  if (max_length < 2) throw Error("CLIPTokenizer::encode_sd: max_length must be at least 2");
  const std::vector<int64_t> ids = encode(text);
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(max_length));
  out.push_back(tables_->bos_id);
  const size_t keep = std::min(ids.size(), static_cast<size_t>(max_length - 2));
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep));
  out.push_back(tables_->eos_id);
  out.resize(static_cast<size_t>(max_length), tables_->eos_id);
  return out;
}

std::string CLIPTokenizer::decode(std::span<const int64_t> ids) const {
  std::string bytes;
  for (int64_t id : ids) {
    for (char32_t c : decode_utf8(id_to_token(id))) {
      auto it = tables_->char_to_byte.find(c);
      if (it != tables_->char_to_byte.end()) {
        bytes.push_back(static_cast<char>(it->second));
      } else {
        append_utf8(bytes, c);  // not a byte char (only in foreign vocabularies): keep as text
      }
    }
  }
  std::string text = encode_utf8(decode_utf8(bytes));
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, 4, "</w>") == 0) {
      out.push_back(' ');
      i += 4;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

int64_t CLIPTokenizer::vocab_size() const { return static_cast<int64_t>(tables_->vocab.size()); }

const std::string& CLIPTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error("CLIPTokenizer: token id " + std::to_string(id) + " is outside the vocabulary (size " +
                std::to_string(vocab_size()) + ")");
  }
  return tables_->vocab[static_cast<size_t>(id)];
}

std::optional<int64_t> CLIPTokenizer::token_to_id(std::string_view token) const {
  auto it = tables_->vocab_index.find(std::string(token));
  if (it == tables_->vocab_index.end()) return std::nullopt;
  return it->second;
}

std::string ftfy_fix_text(std::string_view text) { return encode_utf8(ftfy_fix(decode_utf8(text))); }

std::string clip_clean_text(std::string_view text) { return encode_utf8(clean_text(text)); }

void write_clip_tokenizer_folder(const std::filesystem::path& dir) {
  const auto tokenizer = CLIPTokenizer::from_embedded();
  // Sorted by token, as transformers writes it (and an ordered_json insert would be quadratic here).
  std::map<std::string, int64_t> tokens;
  for (int64_t id = 0; id < tokenizer.vocab_size(); ++id) tokens.emplace(tokenizer.id_to_token(id), id);
  const nlohmann::json vocab(tokens);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream out(dir / name, std::ios::binary);
    out << text;
    if (!out) throw_file_error(dir / name, "cannot write");
  };
  write("vocab.json", vocab.dump(2));
  write("merges.txt", std::string(kiln_clip_merges_begin, kiln_clip_merges_end));
  const nlohmann::ordered_json special = {{"bos_token", std::string(CLIPTokenizer::kBosToken)},
                                          {"eos_token", std::string(CLIPTokenizer::kEosToken)},
                                          {"pad_token", std::string(CLIPTokenizer::kEosToken)},
                                          {"unk_token", std::string(CLIPTokenizer::kEosToken)}};
  write("special_tokens_map.json", special.dump(2));
  nlohmann::ordered_json config = special;
  config["tokenizer_class"] = "CLIPTokenizer";
  config["model_max_length"] = CLIPTokenizer::kMaxLength;
  config["errors"] = "replace";
  config["clean_up_tokenization_spaces"] = true;
  write("tokenizer_config.json", config.dump(2));
}

}  // namespace kiln
