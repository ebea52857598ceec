// The records of a torch.save file as its zip central directory lists them (zip64 included): where each one's bytes
// start, how many there are, how they are stored, and their CRC-32. load() reads and checks this directory before it
// reads any record (a hostile file costs only its directory), uses it to check every record's CRC-32 (LibTorch
// 1.13's PyTorchStreamReader checks none) and to point tensors at their bytes in a mapped file. It reads no file
// differently from Python's torch.load: one top folder, no name twice, nothing compressed.
#pragma once

#include <caffe2/serialize/read_adapter_interface.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace ddprun::checkpoint {

struct ZipRecord {
  uint64_t data_offset = 0;  // of the record's bytes in the file (after its local header)
  uint64_t size = 0;         // bytes as stored (torch.save stores records uncompressed)
  uint16_t method = 0;       // 0: stored
  uint32_t crc32 = 0;
};

struct TorchArchive {
  std::string folder;    // the top folder every record sits in ("archive", or the name torch.save gave it)
  uint64_t version = 0;  // the format version in its version record
  // Record name without the top folder, as PyTorchStreamReader names them ("data.pkl", "data/0") -> record.
  std::unordered_map<std::string, ZipRecord> records;
  std::vector<std::string> in_file_order;  // the same names, by where their bytes start
};

// The zip directory of a torch.save file, checked: every entry within the file, in one top folder, none listed twice,
// none compressed (torch.save stores; a compressed record could inflate to any size), no two sharing bytes (so that
// checking every record reads at most the file), at most kMaxZipEntries; a
// version record ("version" or ".data/version") of a few digits, with its CRC-32, that LibTorch supports.
// Throws std::runtime_error saying what is wrong.
TorchArchive read_torch_archive(const caffe2::serialize::ReadAdapterInterface& zip);

constexpr uint64_t kMaxZipEntries = uint64_t{1} << 20;

// The CRC-32 (zip's, zlib's) of `size` bytes.
uint32_t crc32_of(const void* data, size_t size);
// The CRC-32 of the bytes so far (`crc`, 0 for none) followed by `size` more: crc32_of(a + b) ==
// crc32_update(crc32_of(a), b).
uint32_t crc32_update(uint32_t crc, const void* data, size_t size);

}  // namespace ddprun::checkpoint
