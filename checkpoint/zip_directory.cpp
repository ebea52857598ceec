// Reading and checking a torch.save zip's central directory: the end-of-central-directory record (or its zip64 form),
// one central file header per record (with its zip64 extra field when sizes or offsets overflow 32 bits), each
// record's local header for where its bytes start, and the version record.
#include "checkpoint/zip_directory.h"

#include "checkpoint/quoted_text.h"

#include <caffe2/serialize/versions.h>
#include <isa-l/crc.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace ddprun::checkpoint {
namespace {

uint64_t le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::vector<char> read_at(const caffe2::serialize::ReadAdapterInterface& zip, uint64_t pos, size_t n) {
  std::vector<char> bytes(n);
  if (pos > zip.size() || n > zip.size() - pos || (n > 0 && zip.read(pos, bytes.data(), n, "zip directory") != n))
    throw std::runtime_error("the zip directory points outside the file");
  return bytes;
}

constexpr uint64_t kMax32 = 0xffffffff;

}  // namespace

TorchArchive read_torch_archive(const caffe2::serialize::ReadAdapterInterface& zip) {
  // The end-of-central-directory record: 22 bytes plus a comment of up to 65535 at the end of the file.
  const size_t tail = static_cast<size_t>(std::min<uint64_t>(zip.size(), 22 + 65535));
  const std::vector<char> end = read_at(zip, zip.size() - tail, tail);
  size_t eocd = std::string::npos;
  for (size_t i = tail >= 22 ? tail - 22 + 1 : 0; i-- > 0;) {
    if (std::memcmp(&end[i], "PK\x05\x06", 4) == 0) {
      eocd = i;
      break;
    }
  }
  if (eocd == std::string::npos) throw std::runtime_error("the zip has no end-of-central-directory record");
  uint64_t entries = le(&end[eocd + 10], 2), offset = le(&end[eocd + 16], 4);
  if (entries == 0xffff || offset == kMax32) {  // zip64: the locator sits just before
    const uint64_t eocd_pos = zip.size() - tail + eocd;
    if (eocd_pos < 20) throw std::runtime_error("the zip64 locator is missing");
    const std::vector<char> locator = read_at(zip, eocd_pos - 20, 20);
    if (std::memcmp(locator.data(), "PK\x06\x07", 4) != 0) throw std::runtime_error("the zip64 locator is missing");
    const std::vector<char> eocd64 = read_at(zip, le(&locator[8], 8), 56);
    if (std::memcmp(eocd64.data(), "PK\x06\x06", 4) != 0) throw std::runtime_error("the zip64 directory is missing");
    entries = le(&eocd64[32], 8);
    offset = le(&eocd64[48], 8);
  }
  // Each entry takes at least 46 bytes of directory: more than the file can hold is a lie, not a reason to allocate.
  if (entries > kMaxZipEntries || entries > zip.size() / 46)
    throw std::runtime_error("the zip directory claims " + std::to_string(entries) + " entries, more than a " +
                             "checkpoint holds (at most " + std::to_string(kMaxZipEntries) + ")");
  if (entries == 0) throw std::runtime_error("the zip holds no records");
  TorchArchive archive;
  uint64_t pos = offset;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::vector<char> header = read_at(zip, pos, 46);
    if (std::memcmp(header.data(), "PK\x01\x02", 4) != 0)
      throw std::runtime_error("zip directory entry " + std::to_string(i) + " is corrupt");
    const uint64_t name_length = le(&header[28], 2), extra_length = le(&header[30], 2), comment = le(&header[32], 2);
    const std::vector<char> name = read_at(zip, pos + 46, name_length);
    const std::vector<char> extra = read_at(zip, pos + 46 + name_length, extra_length);
    ZipRecord record;
    record.method = static_cast<uint16_t>(le(&header[10], 2));
    record.crc32 = static_cast<uint32_t>(le(&header[16], 4));
    uint64_t compressed = le(&header[20], 4), uncompressed = le(&header[24], 4), local = le(&header[42], 4);
    // The zip64 extra field holds, in this order, each of these that overflowed 32 bits.
    for (size_t e = 0; e + 4 <= extra.size();) {
      const uint64_t id = le(&extra[e], 2), size = le(&extra[e + 2], 2);
      if (e + 4 + size > extra.size()) break;
      if (id == 1) {
        size_t f = e + 4;
        for (uint64_t* field : {&uncompressed, &compressed, &local}) {
          if (*field != kMax32) continue;
          if (f + 8 > e + 4 + size)
            throw std::runtime_error("zip directory entry " + std::to_string(i) + " is corrupt");
          *field = le(&extra[f], 8);
          f += 8;
        }
      }
      e += 4 + size;
    }
    const std::string full(name.begin(), name.end());
    const std::string shown = quoted_text(full);
    const size_t slash = full.find('/');
    if (slash == std::string::npos || slash == 0)
      throw std::runtime_error("record '" + shown + "' is not in a top folder, as torch.save writes every record");
    const std::string folder = full.substr(0, slash);
    if (i == 0) archive.folder = folder;
    if (folder != archive.folder)
      throw std::runtime_error("record '" + shown + "' lies outside the top folder '" + quoted_text(archive.folder) +
                               "' of the others; torch.load refuses such a file, and so does ddprun");
    if (record.method != 0)
      throw std::runtime_error("record '" + shown + "' is compressed (method " + std::to_string(record.method) +
                               "); torch.save stores records uncompressed");
    if (compressed != uncompressed)
      throw std::runtime_error("record '" + shown + "' is stored with two different sizes");
    const std::vector<char> local_header = read_at(zip, local, 30);
    if (std::memcmp(local_header.data(), "PK\x03\x04", 4) != 0)
      throw std::runtime_error("the local header of zip entry " + std::to_string(i) + " is corrupt");
    record.data_offset = local + 30 + le(&local_header[26], 2) + le(&local_header[28], 2);
    record.size = uncompressed;
    if (record.data_offset > zip.size() || record.size > zip.size() - record.data_offset)
      throw std::runtime_error("zip entry " + std::to_string(i) + " ends past the end of the file");
    if (!archive.records.emplace(full.substr(slash + 1), record).second)
      throw std::runtime_error("the zip lists record '" + shown + "' twice; which one a reader takes is not defined");
    pos += 46 + name_length + extra_length + comment;
  }

  // No two records share bytes (torch.save writes each once, one after the other): the records' bytes then add up to
  // at most the file's size, which bounds what load() reads to check them.
  for (const auto& entry : archive.records) archive.in_file_order.push_back(entry.first);
  const auto& records = archive.records;
  std::sort(archive.in_file_order.begin(), archive.in_file_order.end(), [&records](const auto& a, const auto& b) {
    return std::tie(records.at(a).data_offset, a) < std::tie(records.at(b).data_offset, b);
  });
  for (size_t i = 1; i < archive.in_file_order.size(); ++i) {
    const std::string& before = archive.in_file_order[i - 1];
    const std::string& after = archive.in_file_order[i];
    if (records.at(before).data_offset + records.at(before).size > records.at(after).data_offset)
      throw std::runtime_error("records '" + quoted_text(archive.folder + "/" + before) + "' and '" +
                               quoted_text(archive.folder + "/" + after) +
                               "' share bytes; torch.save writes each record apart");
  }

  // The format version, as PyTorchStreamReader reads it (".data/version" first), checked without inflating anything.
  auto found = archive.records.find(".data/version");
  if (found == archive.records.end()) found = archive.records.find("version");
  if (found == archive.records.end()) throw std::runtime_error("it has no version record (not written by torch.save)");
  const ZipRecord& version = found->second;
  constexpr uint64_t kMaxVersionBytes = 32;
  if (version.size == 0 || version.size > kMaxVersionBytes)
    throw std::runtime_error("its version record holds " + std::to_string(version.size) +
                             " bytes; torch.save writes a number of a few digits");
  const std::vector<char> digits = read_at(zip, version.data_offset, static_cast<size_t>(version.size));
  if (crc32_of(digits.data(), digits.size()) != version.crc32)
    throw std::runtime_error("its version record is corrupt");
  std::string text(digits.begin(), digits.end());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::runtime_error("its version record '" + quoted_text(text) + "' is not a number");
  archive.version = std::stoull(text);
  if (archive.version < caffe2::serialize::kMinSupportedFileFormatVersion ||
      archive.version > caffe2::serialize::kMaxSupportedFileFormatVersion)
    throw std::runtime_error("its format version " + text + " is not one LibTorch reads (" +
                             std::to_string(caffe2::serialize::kMinSupportedFileFormatVersion) + " to " +
                             std::to_string(caffe2::serialize::kMaxSupportedFileFormatVersion) + ")");
  return archive;
}

uint32_t crc32_of(const void* data, size_t size) { return crc32_update(0, data, size); }

uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
  // ISA-L's folding CRC (carry-less multiplication, AVX-512 where the CPU has it): 0.02-0.03 s per GiB on one core
  // here (checkpoint_bench's crc_s), about a tenth of zlib's crc32, so the check costs less than reading the bytes.
  return ::crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), static_cast<uint64_t>(size));
}

}  // namespace ddprun::checkpoint
