// Reading a zip's central directory for the CRC-32 of each record: the end-of-central-directory record (or its zip64
// form), then one central file header per record.
#include "checkpoint/zip_checksums.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
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

}  // namespace

std::unordered_map<std::string, uint32_t> zip_record_checksums(const caffe2::serialize::ReadAdapterInterface& zip) {
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
  if (entries == 0xffff || offset == 0xffffffff) {  // zip64: the locator sits just before
    const uint64_t eocd_pos = zip.size() - tail + eocd;
    if (eocd_pos < 20) throw std::runtime_error("the zip64 locator is missing");
    const std::vector<char> locator = read_at(zip, eocd_pos - 20, 20);
    if (std::memcmp(locator.data(), "PK\x06\x07", 4) != 0) throw std::runtime_error("the zip64 locator is missing");
    const std::vector<char> eocd64 = read_at(zip, le(&locator[8], 8), 56);
    if (std::memcmp(eocd64.data(), "PK\x06\x06", 4) != 0) throw std::runtime_error("the zip64 directory is missing");
    entries = le(&eocd64[32], 8);
    offset = le(&eocd64[48], 8);
  }
  std::unordered_map<std::string, uint32_t> checksums;
  uint64_t pos = offset;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::vector<char> header = read_at(zip, pos, 46);
    if (std::memcmp(header.data(), "PK\x01\x02", 4) != 0)
      throw std::runtime_error("zip directory entry " + std::to_string(i) + " is corrupt");
    const uint64_t name_length = le(&header[28], 2), extra = le(&header[30], 2), comment = le(&header[32], 2);
    const std::vector<char> name = read_at(zip, pos + 46, name_length);
    std::string record(name.begin(), name.end());
    const size_t slash = record.find('/');  // the archive's top folder
    if (slash != std::string::npos) record.erase(0, slash + 1);
    checksums[record] = static_cast<uint32_t>(le(&header[16], 4));
    pos += 46 + name_length + extra + comment;
  }
  return checksums;
}

uint32_t crc32_of(const void* data, size_t size) {
  return static_cast<uint32_t>(::crc32_z(0, static_cast<const Bytef*>(data), size));
}

}  // namespace ddprun::checkpoint
