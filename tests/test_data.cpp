// kiln_data: image decoding (formats, EXIF orientation, alpha), kohya buckets and crops, captions
// and their shaping, folder scans and the synthetic dataset.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "data/buckets.h"
#include "data/captions.h"
#include "data/dataset_scan.h"
#include "data/image_file.h"
#include "data/synthetic.h"
#include "image/image.h"
#include "image/png.h"
#include "util/error.h"
#include "test_support.h"

namespace fs = std::filesystem;
using kiln::Image;
using kiln::Rgb;
using Bucket = std::pair<int, int>;

namespace {

using kiln::test::error_of;

using kiln::test::read_bytes;
using kiln::test::write_bytes;

class DataFiles : public kiln::test::TempDirTest {
 protected:


};

cv::Mat to_bgr(const Image& image) {
  cv::Mat bgr(image.height, image.width, CV_8UC3);
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x) {
      const Rgb c = image.at(x, y);
      bgr.at<cv::Vec3b>(y, x) = {c.b, c.g, c.r};
    }
  return bgr;
}

int max_channel_difference(Rgb a, Rgb b) {
  return std::max({std::abs(a.r - b.r), std::abs(a.g - b.g), std::abs(a.b - b.b)});
}

// Four flat quadrants: large enough blocks that JPEG keeps their colours at the block centres.
constexpr Rgb kRed{220, 20, 20}, kGreen{20, 200, 20}, kBlue{20, 20, 220}, kWhite{255, 255, 255};
Image quadrants(int w, int h) {
  Image im(w, h);
  im.fill_rect(0, 0, w / 2, h / 2, kRed);
  im.fill_rect(w / 2, 0, w - w / 2, h / 2, kGreen);
  im.fill_rect(0, h / 2, w / 2, h - h / 2, kBlue);
  im.fill_rect(w / 2, h / 2, w - w / 2, h - h / 2, kWhite);
  return im;
}

void expect_quadrants(const Image& im, int tolerance) {
  ASSERT_EQ(im.width, 64);
  ASSERT_EQ(im.height, 48);
  EXPECT_LE(max_channel_difference(im.at(16, 12), kRed), tolerance);
  EXPECT_LE(max_channel_difference(im.at(48, 12), kGreen), tolerance);
  EXPECT_LE(max_channel_difference(im.at(16, 36), kBlue), tolerance);
  EXPECT_LE(max_channel_difference(im.at(48, 36), kWhite), tolerance);
}

Image gradient(int w, int h) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      im.set(x, y,
             {static_cast<std::uint8_t>(x * 7), static_cast<std::uint8_t>(y * 11),
              static_cast<std::uint8_t>((x * y + 3 * x) % 256)});
  return im;
}

// ---- buckets ----

TEST(Buckets, DefaultsMatchSdScripts) {
  // By hand from make_bucket_resolutions((512, 512), 256, 1024, 64): max_area 262144, the square
  // 512, and for width 256, 320, ..., 1024 the height min(1024, (262144 // w) // 64 * 64):
  // 1024, 768, 640, 576, 512, 448, 384, 320, 320, 256, 256, 256, 256 -- plus transposes.
  const std::vector<Bucket> expected{{256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704}, {320, 768},
                                     {384, 640}, {448, 576}, {512, 512}, {576, 448},  {640, 384}, {704, 320},
                                     {768, 320}, {832, 256}, {896, 256}, {960, 256},  {1024, 256}};
  const auto buckets = kiln::make_buckets({});
  EXPECT_EQ(buckets, expected);
  EXPECT_EQ(buckets.size(), 17u);
  for (const Bucket& b : {Bucket{512, 512}, Bucket{448, 576}, Bucket{576, 448}, Bucket{384, 640},
                          Bucket{640, 384}, Bucket{320, 768}, Bucket{256, 1024}, Bucket{1024, 256}})
    EXPECT_NE(std::find(buckets.begin(), buckets.end(), b), buckets.end()) << b.first << "x" << b.second;
  for (const auto& [w, h] : buckets) {
    EXPECT_LE(w * h, 512 * 512);
    EXPECT_EQ(w % 64, 0);
    EXPECT_EQ(h % 64, 0);
  }
}

TEST(Buckets, OtherOptionsFollowTheRule) {
  const kiln::BucketOptions options{768, 320, 1536, 64};
  std::set<Bucket> expected;
  const long long area = 768LL * 768;
  expected.insert({768, 768});
  for (int w = 320; w <= 1536; w += 64) {
    const int h = static_cast<int>(std::min<long long>(1536, area / w / 64 * 64));
    if (h >= 320) {
      expected.insert({w, h});
      expected.insert({h, w});
    }
  }
  EXPECT_EQ(kiln::make_buckets(options), std::vector<Bucket>(expected.begin(), expected.end()));
  EXPECT_TRUE(error_of([] { kiln::make_buckets({512, 256, 1024, 0}); }).has_value());
}

TEST(Buckets, ChooseNearestAspectRatio) {
  const auto buckets = kiln::make_buckets({});
  // 4:3 = 1.333: 576/448 = 1.286 is nearer than 640/384 = 1.667.
  EXPECT_EQ(kiln::choose_bucket(1024, 768, buckets), (Bucket{576, 448}));
  EXPECT_EQ(kiln::choose_bucket(768, 1024, buckets), (Bucket{448, 576}));
  EXPECT_EQ(kiln::choose_bucket(300, 300, buckets), (Bucket{512, 512}));
  EXPECT_EQ(kiln::choose_bucket(4000, 100, buckets), (Bucket{1024, 256}));
  EXPECT_EQ(kiln::choose_bucket(1920, 1080, buckets), (Bucket{640, 384}));  // 1.778: 1.667 beats 2.2
}

TEST(Buckets, TiesGoToTheFirstBucket) {
  // A 5x4 image (1.25) is exactly 0.75 from both 2:1 and 1:2.
  EXPECT_EQ(kiln::choose_bucket(5, 4, {{2, 1}, {1, 2}}), (Bucket{2, 1}));
  EXPECT_EQ(kiln::choose_bucket(5, 4, {{1, 2}, {2, 1}}), (Bucket{1, 2}));
  EXPECT_TRUE(error_of([] { kiln::choose_bucket(5, 4, {}); }).has_value());
}

TEST(Crop, OutputHasTheBucketSize) {
  for (const auto& [w, h] : std::vector<Bucket>{{1000, 700}, {100, 300}, {512, 512}, {40, 30}, {500, 90}})
    for (const Bucket& bucket : {Bucket{512, 512}, Bucket{576, 448}, Bucket{256, 1024}})
      for (const auto mode : {kiln::CropMode::Center, kiln::CropMode::Random}) {
        const Image out = kiln::resize_and_crop(gradient(w, h), bucket, mode, 3);
        EXPECT_EQ(out.width, bucket.first);
        EXPECT_EQ(out.height, bucket.second);
        EXPECT_EQ(out.pixels.size(), static_cast<std::size_t>(bucket.first) * bucket.second * 3);
      }
}

TEST(Crop, SameSizeIsUnchanged) {
  const Image in = gradient(64, 48);
  EXPECT_EQ(kiln::resize_and_crop(in, {64, 48}, kiln::CropMode::Random, 9).pixels, in.pixels);
}

TEST(Crop, CenterCropKeepsACentredStripeCentred) {
  // 200x100 white with a black stripe over columns 95..104; into 64x64 it scales to 128x64 and
  // loses 32 columns each side, so the stripe's middle lands on x = 32 (in pixel-centre terms 31.5).
  Image in(200, 100, kWhite);
  in.fill_rect(95, 0, 10, 100, Rgb{0, 0, 0});
  const Image out = kiln::resize_and_crop(in, {64, 64}, kiln::CropMode::Center, 0);
  double weighted = 0, total = 0;
  for (int x = 0; x < out.width; ++x) {
    const double darkness = 255.0 - out.at(x, 32).r;
    weighted += darkness * x;
    total += darkness;
  }
  ASSERT_GT(total, 0);
  EXPECT_NEAR(weighted / total, 31.5, 0.75);
  EXPECT_EQ(out.at(0, 32), kWhite);
  EXPECT_EQ(out.at(63, 32), kWhite);
}

TEST(Crop, RandomCropIsDeterministicPerSeed) {
  // 96x64 into 64x64: no scaling, 33 possible horizontal offsets.
  const Image in = gradient(96, 64);
  std::set<int> offsets;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const Image a = kiln::resize_and_crop(in, {64, 64}, kiln::CropMode::Random, seed);
    const Image b = kiln::resize_and_crop(in, {64, 64}, kiln::CropMode::Random, seed);
    EXPECT_EQ(a.pixels, b.pixels);
    offsets.insert(a.at(0, 0).r / 7);  // the gradient's red is 7 * x
    // The crop is a plain window of the input at the offset the documented rule gives.
    std::mt19937_64 gen(seed);
    const int left = static_cast<int>(gen() % 33);
    EXPECT_EQ(a.at(0, 0), in.at(left, 0)) << "seed " << seed;
    EXPECT_EQ(a.at(63, 63), in.at(left + 63, 63)) << "seed " << seed;
  }
  EXPECT_GE(offsets.size(), 10u);
}

TEST(Crop, FlipHorizontal) {
  const Image in = gradient(7, 5);
  const Image flipped = kiln::flip_horizontal(in);
  ASSERT_EQ(flipped.width, 7);
  ASSERT_EQ(flipped.height, 5);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 7; ++x) EXPECT_EQ(flipped.at(x, y), in.at(6 - x, y));
  EXPECT_EQ(kiln::flip_horizontal(flipped).pixels, in.pixels);
}

// ---- decoding ----

TEST_F(DataFiles, LoadsPngJpegWebpAndBmp) {
  const cv::Mat bgr = to_bgr(quadrants(64, 48));
  ASSERT_TRUE(cv::imwrite((dir_ / "q.png").string(), bgr));
  ASSERT_TRUE(cv::imwrite((dir_ / "q.jpg").string(), bgr, {cv::IMWRITE_JPEG_QUALITY, 95}));
  ASSERT_TRUE(cv::imwrite((dir_ / "q.webp").string(), bgr, {cv::IMWRITE_WEBP_QUALITY, 90}));
  ASSERT_TRUE(cv::imwrite((dir_ / "lossless.webp").string(), bgr, {cv::IMWRITE_WEBP_QUALITY, 101}));
  ASSERT_TRUE(cv::imwrite((dir_ / "q.bmp").string(), bgr));
  EXPECT_EQ(kiln::load_image(dir_ / "q.png").pixels, quadrants(64, 48).pixels);
  EXPECT_EQ(kiln::load_image(dir_ / "q.bmp").pixels, quadrants(64, 48).pixels);
  EXPECT_EQ(kiln::load_image(dir_ / "lossless.webp").pixels, quadrants(64, 48).pixels);
  expect_quadrants(kiln::load_image(dir_ / "q.jpg"), 12);
  expect_quadrants(kiln::load_image(dir_ / "q.webp"), 16);
}

TEST_F(DataFiles, GreyAndSixteenBitPng) {
  cv::Mat grey(10, 12, CV_8UC1, cv::Scalar(77));
  ASSERT_TRUE(cv::imwrite((dir_ / "grey.png").string(), grey));
  const Image g = kiln::load_image(dir_ / "grey.png");
  EXPECT_EQ(g.width, 12);
  EXPECT_EQ(g.height, 10);
  EXPECT_EQ(g.at(3, 4), (Rgb{77, 77, 77}));

  cv::Mat deep(10, 12, CV_16UC3, cv::Scalar(0, 257 * 100, 65535));  // B, G, R
  ASSERT_TRUE(cv::imwrite((dir_ / "deep.png").string(), deep));
  EXPECT_EQ(kiln::load_image(dir_ / "deep.png").at(5, 5), (Rgb{255, 100, 0}));
}

// libpng's warnings (a damaged ancillary chunk here; "iCCP: known incorrect sRGB profile" in real
// photo folders) stay off the console: the picture itself is fine.
TEST_F(DataFiles, PngDecoderWarningsStayQuiet) {
  kiln::write_png(dir_ / "noted.png", quadrants(16, 12), {{"Comment", "made by a photo editor"}});
  std::string bytes = read_bytes(dir_ / "noted.png");
  const auto text_chunk = bytes.find("tEXt");
  ASSERT_NE(text_chunk, std::string::npos);
  const size_t length = static_cast<std::uint8_t>(bytes[text_chunk - 1]);  // short chunk: low byte only
  bytes[text_chunk + 4 + length] ^= 0x5A;                                  // its CRC
  write_bytes(dir_ / "noted.png", bytes);
  testing::internal::CaptureStderr();
  const Image image = kiln::load_image(dir_ / "noted.png");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(image.pixels, quadrants(16, 12).pixels);
}

// TIFFs as scanners and cameras write them: 16-bit grey, RGBA, 8-bit RGB (OpenCV's libtiff).
TEST_F(DataFiles, TiffGreySixteenBitAndAlpha) {
  cv::Mat deep_grey(6, 5, CV_16UC1, cv::Scalar(257 * 90));
  ASSERT_TRUE(cv::imwrite((dir_ / "grey16.tif").string(), deep_grey));
  const Image g = kiln::load_image(dir_ / "grey16.tif");
  EXPECT_EQ(g.width, 5);
  EXPECT_EQ(g.height, 6);
  EXPECT_EQ(g.at(2, 3), (Rgb{90, 90, 90}));

  cv::Mat bgra(4, 4, CV_8UC4, cv::Scalar(0, 0, 200, 255));
  bgra.at<cv::Vec4b>(1, 1) = {0, 0, 200, 0};
  bgra.at<cv::Vec4b>(2, 2) = {0, 0, 200, 128};
  ASSERT_TRUE(cv::imwrite((dir_ / "alpha.tiff").string(), bgra));
  const Image a = kiln::load_image(dir_ / "alpha.tiff");
  EXPECT_EQ(a.at(0, 0), (Rgb{200, 0, 0}));
  EXPECT_EQ(a.at(1, 1), kWhite);
  EXPECT_EQ(a.at(2, 2), (Rgb{227, 127, 127}));  // as for PNG: (200*128 + 255*127) / 255

  ASSERT_TRUE(cv::imwrite((dir_ / "q.tif").string(), to_bgr(quadrants(64, 48))));
  EXPECT_EQ(kiln::load_image(dir_ / "q.tif").pixels, quadrants(64, 48).pixels);
  EXPECT_TRUE(kiln::is_image_file(dir_ / "Q.TIF"));
}

TEST_F(DataFiles, AlphaIsCompositedOverWhite) {
  cv::Mat bgra(8, 8, CV_8UC4);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      bgra.at<cv::Vec4b>(y, x) = x < 4 ? cv::Vec4b{0, 0, 200, 0} : cv::Vec4b{0, 0, 200, 255};
  bgra.at<cv::Vec4b>(7, 7) = {0, 0, 200, 128};  // half-transparent red: (200*128 + 255*127) / 255
  for (const char* name : {"a.png", "a.webp"}) {
    ASSERT_TRUE(cv::imwrite((dir_ / name).string(), bgra, {cv::IMWRITE_WEBP_QUALITY, 101})) << name;
    const Image im = kiln::load_image(dir_ / name);
    EXPECT_EQ(im.at(1, 1), kWhite) << name;
    EXPECT_EQ(im.at(5, 1), (Rgb{200, 0, 0})) << name;
    EXPECT_EQ(im.at(7, 7), (Rgb{227, 127, 127})) << name;
  }
}

TEST_F(DataFiles, JpegExifOrientationIsApplied) {
  // A 40x20 landscape JPEG tagged orientation 6: viewers rotate it 90 degrees clockwise.
  std::vector<std::uint8_t> jpeg;
  ASSERT_TRUE(cv::imencode(".jpg", to_bgr(quadrants(40, 20)), jpeg, {cv::IMWRITE_JPEG_QUALITY, 95}));
  ASSERT_GE(jpeg.size(), 2u);
  ASSERT_EQ(jpeg[0], 0xFF);
  ASSERT_EQ(jpeg[1], 0xD8);
  const std::vector<std::uint8_t> app1{
      0xFF, 0xE1, 0x00, 0x22,                          // APP1, length 34 (counting itself)
      'E',  'x',  'i',  'f',  0x00, 0x00,              // Exif header
      'I',  'I',  0x2A, 0x00, 0x08, 0x00, 0x00, 0x00,  // TIFF little-endian, first IFD at 8
      0x01, 0x00,                                      // one entry
      0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00,  // Orientation, SHORT, count 1
      0x06, 0x00, 0x00, 0x00,                          // value 6
      0x00, 0x00, 0x00, 0x00};                         // no next IFD
  jpeg.insert(jpeg.begin() + 2, app1.begin(), app1.end());
  write_bytes(dir_ / "rotated.jpg", std::string(jpeg.begin(), jpeg.end()));

  const Image im = kiln::load_image(dir_ / "rotated.jpg");
  ASSERT_EQ(im.width, 20);
  ASSERT_EQ(im.height, 40);
  // Clockwise: stored bottom-left goes to the top-left, top-left to the top-right, and so on.
  EXPECT_LE(max_channel_difference(im.at(5, 10), kBlue), 12);
  EXPECT_LE(max_channel_difference(im.at(15, 10), kRed), 12);
  EXPECT_LE(max_channel_difference(im.at(5, 30), kWhite), 12);
  EXPECT_LE(max_channel_difference(im.at(15, 30), kGreen), 12);
}

TEST_F(DataFiles, BadFilesNameThePath) {
  std::mt19937_64 gen(1);
  std::string noise(500, '\0');
  for (char& c : noise) c = static_cast<char>(gen() & 0xFF);
  write_bytes(dir_ / "x.png", noise);
  write_bytes(dir_ / "empty.jpg", "");
  write_bytes(dir_ / "cut.png", read_bytes(dir_ / "x.png").substr(0, 10));
  for (const char* name : {"x.png", "empty.jpg", "missing.webp"}) {
    const auto message = error_of([&] { kiln::load_image(dir_ / name); });
    ASSERT_TRUE(message.has_value()) << name;
    EXPECT_NE(message->find((dir_ / name).string()), std::string::npos) << *message;
    EXPECT_NE(message->find("not a readable image (JPEG, PNG, WebP, BMP, TIFF)"), std::string::npos) << *message;
  }
  // A real PNG cut short after its header.
  ASSERT_TRUE(cv::imwrite((dir_ / "whole.png").string(), to_bgr(gradient(64, 64))));
  const std::string whole = read_bytes(dir_ / "whole.png");
  write_bytes(dir_ / "truncated.png", whole.substr(0, whole.size() / 3));
  EXPECT_TRUE(error_of([&] { kiln::load_image(dir_ / "truncated.png"); }).has_value());
}

// A few kilobytes whose header claims a picture of gigabytes is refused from the header, before the
// decoder allocates: real files of each format with their stated size patched.
TEST_F(DataFiles, DecompressionBombsAreRefusedFromTheHeader) {
  const auto picture = to_bgr(gradient(64, 48));
  auto patched = [&](const char* name, const std::function<void(std::string&)>& patch) {
    ASSERT_TRUE(cv::imwrite((dir_ / name).string(), picture)) << name;
    std::string bytes = read_bytes(dir_ / name);
    patch(bytes);
    write_bytes(dir_ / name, bytes);
  };
  auto put_be16 = [](std::string& b, size_t at, unsigned v) {
    b[at] = static_cast<char>(v >> 8);
    b[at + 1] = static_cast<char>(v & 0xFF);
  };
  auto put_le32 = [](std::string& b, size_t at, std::uint32_t v) {
    for (size_t i = 0; i < 4; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  };
  patched("bomb.png", [&](std::string& b) {  // IHDR width and height, big-endian
    put_be16(b, 16, 0), put_be16(b, 18, 30000), put_be16(b, 20, 0), put_be16(b, 22, 30000);
  });
  patched("bomb.jpg", [&](std::string& b) {  // the baseline start-of-frame's height and width
    const auto sof = b.find("\xFF\xC0");
    ASSERT_NE(sof, std::string::npos);
    put_be16(b, sof + 5, 65000), put_be16(b, sof + 7, 65000);
  });
  patched("bomb.bmp", [&](std::string& b) { put_le32(b, 18, 100000), put_le32(b, 22, 100000); });
  patched("bomb.webp", [&](std::string& b) {  // lossless VP8L: 14-bit width − 1 and height − 1
    ASSERT_EQ(b.substr(12, 4), "VP8L");
    std::uint32_t bits = 0;
    for (size_t i = 0; i < 4; ++i) bits |= std::uint32_t{static_cast<std::uint8_t>(b[21 + i])} << (8 * i);
    put_le32(b, 21, (bits & 0xF0000000u) | 16383u | (16383u << 14));
  });
  patched("bomb.tif", [&](std::string& b) {  // the first directory's ImageWidth and ImageLength
    ASSERT_EQ(b.substr(0, 2), "II");
    const auto u16 = [&](size_t at) { return static_cast<unsigned>(static_cast<std::uint8_t>(b[at])) |
                                             static_cast<unsigned>(static_cast<std::uint8_t>(b[at + 1])) << 8; };
    size_t ifd = 0;
    for (size_t i = 0; i < 4; ++i) ifd |= size_t{static_cast<std::uint8_t>(b[4 + i])} << (8 * i);
    int found = 0;
    for (unsigned i = 0; i < u16(ifd); ++i) {
      const size_t entry = ifd + 2 + 12 * i;
      if (u16(entry) != 256 && u16(entry) != 257) continue;
      b[entry + 2] = 4, b[entry + 3] = 0;  // LONG
      put_le32(b, entry + 8, 100000);
      ++found;
    }
    ASSERT_EQ(found, 2);
  });
  for (const char* name : {"bomb.png", "bomb.jpg", "bomb.bmp", "bomb.webp", "bomb.tif"}) {
    const auto message = error_of([&] { kiln::load_image(dir_ / name); });
    ASSERT_TRUE(message.has_value()) << name;
    EXPECT_NE(message->find((dir_ / name).string()), std::string::npos) << *message;
    EXPECT_NE(message->find("decompression bomb"), std::string::npos) << *message;
  }
  EXPECT_NE(error_of([&] { kiln::load_image(dir_ / "bomb.png"); })->find("30000x30000"), std::string::npos);
  ASSERT_TRUE(cv::imwrite((dir_ / "fine.png").string(), picture));
  EXPECT_EQ(kiln::load_image(dir_ / "fine.png").width, 64);
}

TEST(ImageFiles, RecognisedByExtension) {
  for (const char* name : {"a.jpg", "a.JPEG", "dir/b.Png", "c.webp", "d.BMP", "e.jpeg"})
    EXPECT_TRUE(kiln::is_image_file(name)) << name;
  for (const char* name : {"a.txt", "a.caption", "png", "a.png.txt", "a.gif", "a"})
    EXPECT_FALSE(kiln::is_image_file(name)) << name;
}

// ---- captions ----

TEST_F(DataFiles, CaptionSidecarsAndFallback) {
  EXPECT_EQ(kiln::read_caption(dir_ / "red_sports_car.png"), "red sports car");
  write_bytes(dir_ / "a.caption", "from caption");
  EXPECT_EQ(kiln::read_caption(dir_ / "a.jpg"), "from caption");
  write_bytes(dir_ / "a.txt", "  from txt \n");
  EXPECT_EQ(kiln::read_caption(dir_ / "a.jpg"), "from txt");  // .txt comes first
  EXPECT_EQ(kiln::read_caption(dir_ / "a.jpg", {".caption", ".txt"}), "from caption");
  write_bytes(dir_ / "b.txt",
              "\xEF\xBB\xBF"
              "caf\xC3\xA9, \xE2\x9C\x93\r\n\r\n  second line \n\n third\n");
  EXPECT_EQ(kiln::read_caption(dir_ / "b.png"), "caf\xC3\xA9, \xE2\x9C\x93, second line, third");
  write_bytes(dir_ / "c.txt", "\xF0\x9F\x98\x80 emoji");
  EXPECT_EQ(kiln::read_caption(dir_ / "c.png"), "\xF0\x9F\x98\x80 emoji");
}

TEST_F(DataFiles, CaptionMustBeUtf8) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"abc\xFF", "byte 3"},
      {"\xEF\xBB\xBF"
       "ab\xC3",
       "byte 5"},                      // truncated sequence; the BOM counts as file bytes
      {"x\xC0\xAF", "byte 1"},         // overlong '/'
      {"ok \xED\xA0\x80", "byte 3"},   // UTF-16 surrogate
      {"\xF4\x90\x80\x80", "byte 0"},  // above U+10FFFF
      {"latin-1 caf\xE9 au lait", "byte 11"}};
  for (const auto& [text, where] : cases) {
    write_bytes(dir_ / "bad.txt", text);
    const auto message = error_of([&] { kiln::read_caption(dir_ / "bad.png"); });
    ASSERT_TRUE(message.has_value()) << where;
    EXPECT_NE(message->find((dir_ / "bad.txt").string()), std::string::npos) << *message;
    EXPECT_NE(message->find("not UTF-8 at " + where), std::string::npos) << *message;
  }
}

std::vector<std::string> split(const std::string& caption) {
  std::vector<std::string> tags;
  std::size_t start = 0;
  while (start <= caption.size() && !caption.empty()) {
    const auto comma = caption.find(", ", start);
    tags.push_back(caption.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 2;
  }
  return tags;
}

TEST(ProcessCaption, CleansAndJoins) {
  EXPECT_EQ(kiln::process_caption(" a,  b ,,c ,", {}, 0), "a, b, c");
  EXPECT_EQ(kiln::process_caption("", {}, 0), "");
}

TEST(ProcessCaption, ActivationPhraseOnceAndFirst) {
  kiln::CaptionOptions options;
  options.activation_phrase = "sks dog";
  EXPECT_EQ(kiln::process_caption("a, b", options, 0), "sks dog, a, b");
  EXPECT_EQ(kiln::process_caption("sks dog, a, b", options, 0), "sks dog, a, b");
  EXPECT_EQ(kiln::process_caption("a, sks dog, b", options, 0), "sks dog, a, b");
  EXPECT_EQ(kiln::process_caption("", options, 0), "sks dog");
  options.shuffle_tags = true;
  for (std::uint64_t seed = 0; seed < 100; ++seed) {
    const auto tags = split(kiln::process_caption("a, b, sks dog, c, d", options, seed));
    ASSERT_EQ(tags.size(), 5u);
    EXPECT_EQ(tags[0], "sks dog");
    EXPECT_EQ(std::count(tags.begin(), tags.end(), "sks dog"), 1);
  }
}

TEST(ProcessCaption, ShuffleKeepsTheFirstTagsAndPermutesTheRest) {
  kiln::CaptionOptions options;
  options.activation_phrase = "ohwx";
  options.shuffle_tags = true;
  options.keep_tags = 3;
  const std::string caption = "t0, t1, t2, t3, t4, t5, t6, t7, t8, t9";
  std::set<std::vector<std::string>> orders;
  for (std::uint64_t seed = 0; seed < 500; ++seed) {
    const std::string out = kiln::process_caption(caption, options, seed);
    EXPECT_EQ(out, kiln::process_caption(caption, options, seed));
    auto tags = split(out);
    ASSERT_EQ(tags.size(), 11u) << out;
    EXPECT_EQ(std::vector<std::string>(tags.begin(), tags.begin() + 4),
              (std::vector<std::string>{"ohwx", "t0", "t1", "t2"}))
        << out;
    orders.insert(tags);
    std::sort(tags.begin() + 4, tags.end());
    EXPECT_EQ(tags,
              (std::vector<std::string>{"ohwx", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"}));
  }
  EXPECT_GT(orders.size(), 400u);  // 7! = 5040 orders; 500 seeds should rarely repeat
  options.keep_tags = 50;          // more than there are: nothing moves
  EXPECT_EQ(kiln::process_caption(caption, options, 7), "ohwx, " + caption);
}

TEST(ProcessCaption, PortableShuffleSequence) {
  // The documented rule, replayed: one draw for dropout, then Fisher-Yates from the back.
  kiln::CaptionOptions options;
  options.shuffle_tags = true;
  std::vector<std::string> tags{"a", "b", "c", "d", "e"};
  std::mt19937_64 gen(42);
  gen();
  for (std::size_t i = tags.size() - 1; i >= 1; --i) std::swap(tags[i], tags[gen() % (i + 1)]);
  std::string expected;
  for (const auto& t : tags) expected += (expected.empty() ? "" : ", ") + t;
  EXPECT_EQ(kiln::process_caption("a, b, c, d, e", options, 42), expected);
}

TEST(ProcessCaption, TagsToStartAndEnd) {
  kiln::CaptionOptions options;
  options.activation_phrase = "act";
  options.tags_to_start = {"start1", "start2"};
  options.tags_to_end = {"end1", "end2", "absent"};
  const std::string caption = "a, end2, b, start2, end1, c, start1";
  EXPECT_EQ(kiln::process_caption(caption, options, 0), "act, start1, start2, a, b, c, end1, end2");
  options.shuffle_tags = true;
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    auto tags = split(kiln::process_caption(caption, options, seed));
    ASSERT_EQ(tags.size(), 8u);
    EXPECT_EQ(tags[0], "act");
    EXPECT_EQ(tags[1], "start1");
    EXPECT_EQ(tags[2], "start2");
    EXPECT_EQ(tags[6], "end1");
    EXPECT_EQ(tags[7], "end2");
    std::sort(tags.begin() + 3, tags.begin() + 6);
    EXPECT_EQ(std::vector<std::string>(tags.begin() + 3, tags.begin() + 6),
              (std::vector<std::string>{"a", "b", "c"}));
  }
}

TEST(ProcessCaption, Dropout) {
  kiln::CaptionOptions options;
  options.dropout = 0.3;
  int dropped = 0;
  for (std::uint64_t seed = 0; seed < 10000; ++seed) {
    const bool short_dropped = kiln::process_caption("a", options, seed).empty();
    // The decision comes from the first draw, whatever the caption's length.
    EXPECT_EQ(short_dropped, kiln::process_caption("a, b, c, d, e, f", options, seed).empty());
    dropped += short_dropped;
  }
  EXPECT_NEAR(dropped / 10000.0, 0.3, 0.02);
  for (std::uint64_t seed = 0; seed < 1000; ++seed) {
    options.dropout = 0.0;
    EXPECT_EQ(kiln::process_caption("a, b", options, seed), "a, b");
    options.dropout = 1.0;
    EXPECT_EQ(kiln::process_caption("a, b", options, seed), "");
  }
}

TEST(ProcessCaption, DropoutSettingDoesNotChangeTheShuffle) {
  kiln::CaptionOptions options;
  options.shuffle_tags = true;
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    options.dropout = 0.0;
    const std::string plain = kiln::process_caption("a, b, c, d, e", options, seed);
    options.dropout = 0.1;
    const std::string with_dropout = kiln::process_caption("a, b, c, d, e", options, seed);
    if (!with_dropout.empty()) {
      EXPECT_EQ(plain, with_dropout);
    }
  }
}

// ---- folder scans ----

TEST_F(DataFiles, ScanFolders) {
  const fs::path one = dir_ / "10_one", two = dir_ / "two";
  fs::create_directories(one / "nested");
  fs::create_directories(two);
  ASSERT_TRUE(cv::imwrite((one / "b_thing.png").string(), to_bgr(gradient(30, 20))));
  ASSERT_TRUE(cv::imwrite((one / "a.jpg").string(), to_bgr(gradient(16, 24))));
  ASSERT_TRUE(cv::imwrite((one / "c.webp").string(), to_bgr(gradient(8, 8))));
  ASSERT_TRUE(cv::imwrite((one / "nested" / "deep.png").string(), to_bgr(gradient(8, 8))));
  write_bytes(one / "a.txt", "caption of a\n");
  write_bytes(one / "notes.md", "not an image");
  ASSERT_TRUE(cv::imwrite((two / "z.png").string(), to_bgr(gradient(10, 10))));

  std::ostringstream warnings;
  const auto items = kiln::scan_folders({{one, 2}, {two, 1}}, false, warnings);
  // What training will not see is named: the stray file and the sub-folder (never searched).
  EXPECT_EQ(warnings.str(),
            "note: " + one.string() + ": 1 file not used (neither a picture kiln reads nor its caption): notes.md\n" +
                "note: " + one.string() +
                ": 1 sub-folder not read (list a folder in data.folders to train on it): nested\n");
  ASSERT_EQ(items.size(), 7u);
  const std::vector<std::string> names{"a.jpg",  "a.jpg",  "b_thing.png", "b_thing.png",
                                       "c.webp", "c.webp", "z.png"};
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(items[i].image.filename().string(), names[i]);
  EXPECT_EQ(items[0].image, one / "a.jpg");
  EXPECT_EQ(items[0].caption, "caption of a");
  EXPECT_EQ(items[0].width, 16);
  EXPECT_EQ(items[0].height, 24);
  EXPECT_EQ(items[2].caption, "b thing");
  EXPECT_EQ(items[2].width, 30);
  EXPECT_EQ(items[2].height, 20);
  EXPECT_EQ(items[6].caption, "z");
}

TEST_F(DataFiles, ScanFolderErrors) {
  std::ostringstream warnings;
  fs::create_directories(dir_ / "empty");
  write_bytes(dir_ / "empty" / "only.txt", "caption without image");
  for (const fs::path& folder : {dir_ / "empty", dir_ / "missing"}) {
    const auto message = error_of([&] { kiln::scan_folders({{folder, 1}}, true, warnings); });
    ASSERT_TRUE(message.has_value()) << folder;
    EXPECT_NE(message->find(folder.string()), std::string::npos) << *message;
  }
  ASSERT_TRUE(cv::imwrite((dir_ / "ok.png").string(), to_bgr(gradient(8, 8))));
  const auto repeats = error_of([&] { kiln::scan_folders({{dir_, 0}}, false, warnings); });
  ASSERT_TRUE(repeats.has_value());
  EXPECT_NE(repeats->find("repeats"), std::string::npos) << *repeats;
}

TEST_F(DataFiles, ScanBadFilesThrowOrAreSkipped) {
  ASSERT_TRUE(cv::imwrite((dir_ / "good.png").string(), to_bgr(gradient(8, 8))));
  ASSERT_TRUE(cv::imwrite((dir_ / "words.png").string(), to_bgr(gradient(8, 8))));
  write_bytes(dir_ / "words.txt", "bad \xFF caption");
  write_bytes(dir_ / "x.png", "definitely not a PNG");

  std::ostringstream warnings;
  const auto message = error_of([&] { kiln::scan_folders({{dir_, 1}}, false, warnings); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find((dir_ / "words.txt").string()), std::string::npos) << *message;

  const auto items = kiln::scan_folders({{dir_, 3}}, true, warnings);
  ASSERT_EQ(items.size(), 3u);
  for (const auto& item : items) EXPECT_EQ(item.image, dir_ / "good.png");
  const std::string text = warnings.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  EXPECT_NE(text.find((dir_ / "x.png").string() + ": not a readable image"), std::string::npos) << text;
  EXPECT_NE(text.find((dir_ / "words.txt").string() + ": not UTF-8 at byte 4"), std::string::npos) << text;

  fs::remove(dir_ / "words.txt");
  const auto bad_image = error_of([&] { kiln::scan_folders({{dir_, 1}}, false, warnings); });
  ASSERT_TRUE(bad_image.has_value());
  EXPECT_NE(bad_image->find((dir_ / "x.png").string()), std::string::npos) << *bad_image;
}

// ---- synthetic data ----

// The nearest of the named colours the generator uses, so the test does not copy its exact values.
std::string colour_name(Rgb c) {
  static const std::array<std::pair<const char*, Rgb>, 7> kPalette{{{"red", {255, 0, 0}},
                                                                    {"green", {0, 255, 0}},
                                                                    {"blue", {0, 0, 255}},
                                                                    {"yellow", {255, 255, 0}},
                                                                    {"black", {0, 0, 0}},
                                                                    {"white", {255, 255, 255}},
                                                                    {"grey", {128, 128, 128}}}};
  const char* best = "";
  int best_distance = std::numeric_limits<int>::max();
  for (const auto& [name, p] : kPalette) {
    const int d = (c.r - p.r) * (c.r - p.r) + (c.g - p.g) * (c.g - p.g) + (c.b - p.b) * (c.b - p.b);
    if (d < best_distance) {
      best_distance = d;
      best = name;
    }
  }
  return best;
}

TEST_F(DataFiles, SyntheticDatasetMatchesItsCaptions) {
  kiln::write_synthetic_dataset(dir_ / "a", 24, 64, 7);
  kiln::write_synthetic_dataset(dir_ / "b", 24, 64, 7);
  kiln::write_synthetic_dataset(dir_ / "c", 24, 64, 8);
  std::set<std::string> shapes, colours;
  bool differs_from_other_seed = false;
  for (int i = 0; i < 24; ++i) {
    char stem[8];
    std::snprintf(stem, sizeof stem, "%04d", i);
    const fs::path png = dir_ / "a" / (std::string(stem) + ".png");
    const fs::path txt = dir_ / "a" / (std::string(stem) + ".txt");
    ASSERT_TRUE(fs::exists(png)) << png;
    ASSERT_TRUE(fs::exists(txt)) << txt;
    EXPECT_EQ(read_bytes(png), read_bytes(dir_ / "b" / png.filename()));
    EXPECT_EQ(read_bytes(txt), read_bytes(dir_ / "b" / txt.filename()));
    differs_from_other_seed |= read_bytes(png) != read_bytes(dir_ / "c" / png.filename());

    // "a <colour> <shape>, <background> background"
    const std::string caption = kiln::read_caption(png);
    std::istringstream words(caption);
    std::string article, colour, shape, background, last;
    words >> article >> colour >> shape >> background >> last;
    ASSERT_EQ(article, "a") << caption;
    ASSERT_EQ(shape.back(), ',') << caption;
    shape.pop_back();
    ASSERT_EQ(last, "background") << caption;
    ASSERT_NE(colour, background) << caption;
    shapes.insert(shape);
    colours.insert(colour);

    const Image im = kiln::read_png(png);
    ASSERT_EQ(im.width, 64);
    ASSERT_EQ(im.height, 64);
    // The shape covers at most 3/4 of each side, so some corner shows the background.
    std::optional<Rgb> bg;
    for (const auto& [x, y] : {Bucket{0, 0}, Bucket{63, 0}, Bucket{0, 63}, Bucket{63, 63}})
      if (colour_name(im.at(x, y)) == background) bg = im.at(x, y);
    ASSERT_TRUE(bg.has_value()) << caption;
    int left = 64, right = -1, top = 64, bottom = -1;
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x)
        if (im.at(x, y) != *bg) {
          left = std::min(left, x), right = std::max(right, x);
          top = std::min(top, y), bottom = std::max(bottom, y);
        }
    ASSERT_GE(right, left) << caption;
    EXPECT_EQ(colour_name(im.at((left + right) / 2, (top + bottom) / 2)), colour) << caption;
    // The shape word matches the outline: squares fill their box, circles leave its corners,
    // triangles (apex up) leave the top corners but not the bottom ones.
    const bool top_corner = im.at(left, top) != *bg, bottom_corner = im.at(left, bottom) != *bg;
    if (shape == "square") {
      EXPECT_TRUE(top_corner && bottom_corner) << caption;
    } else if (shape == "circle") {
      EXPECT_TRUE(!top_corner && !bottom_corner) << caption;
    } else {
      ASSERT_EQ(shape, "triangle") << caption;
      EXPECT_TRUE(!top_corner && bottom_corner) << caption;
    }
  }
  EXPECT_TRUE(differs_from_other_seed);
  EXPECT_EQ(shapes.size(), 3u);
  EXPECT_GE(colours.size(), 4u);
  EXPECT_TRUE(error_of([&] { kiln::write_synthetic_dataset(dir_ / "d", 1, 8, 0); }).has_value());
}

// The style set: the invented look everywhere (stripes behind, an orange rim, the subject's colour
// inside), captions of activation phrase + subject that never describe the look.
TEST_F(DataFiles, StyleDatasetHasItsLookAndPhrase) {
  kiln::write_style_dataset(dir_ / "s", 12, 64, 26, "kilnglaze style");
  kiln::write_style_dataset(dir_ / "t", 12, 64, 26, "kilnglaze style");
  for (int i = 0; i < 12; ++i) {
    char stem[8];
    std::snprintf(stem, sizeof stem, "%04d", i);
    const fs::path png = dir_ / "s" / (std::string(stem) + ".png");
    EXPECT_EQ(read_bytes(png), read_bytes(dir_ / "t" / png.filename()));
    const std::string caption = kiln::read_caption(png);
    std::istringstream words(caption);
    std::string phrase1, phrase2, article, colour, shape, extra;
    words >> phrase1 >> phrase2 >> article >> colour >> shape;
    ASSERT_EQ(phrase1 + " " + phrase2, "kilnglaze style,") << caption;
    ASSERT_EQ(article, "a") << caption;
    EXPECT_FALSE(words >> extra) << caption;  // nothing after the subject
    EXPECT_EQ(caption.find("background"), std::string::npos) << caption;

    const Image im = kiln::read_png(png);
    // Both stripe colours show, and so does the rim; the subject's colour is drawn too.
    int stripe_a = 0, stripe_b = 0, rim = 0, subject = 0;
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x) {
        const Rgb c = im.at(x, y);
        stripe_a += c == kiln::kStyleStripeA;
        stripe_b += c == kiln::kStyleStripeB;
        rim += c == kiln::kStyleRim;
        subject += colour_name(c) == colour;
      }
    EXPECT_GT(stripe_a, 200) << caption;
    EXPECT_GT(stripe_b, 200) << caption;
    EXPECT_GT(rim, 20) << caption;
    EXPECT_GT(subject, 40) << caption;
  }
}

}  // namespace
