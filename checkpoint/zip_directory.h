// The records of a zip file as its central directory lists them (zip64 included): where each one's bytes start, how
// many there are, how they are stored, and their CRC-32. load() uses it to check every record (LibTorch 1.13's
// PyTorchStreamReader checks none) and to point tensors at their bytes in a mapped file.
#pragma once

#include <caffe2/serialize/read_adapter_interface.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

namespace ddprun::checkpoint {

struct ZipRecord {
  uint64_t data_offset = 0;  // of the record's bytes in the file (after its local header)
  uint64_t size = 0;         // bytes as stored (torch.save stores records uncompressed)
  uint16_t method = 0;       // 0: stored
  uint32_t crc32 = 0;
};

// Record name (without the archive's top folder, as PyTorchStreamReader names them: "data.pkl", "data/0") -> record.
// Throws std::runtime_error when the directory or a local header cannot be read or points outside the file.
std::unordered_map<std::string, ZipRecord> read_zip_directory(const caffe2::serialize::ReadAdapterInterface& zip);

// The CRC-32 (zip's, zlib's) of `size` bytes.
uint32_t crc32_of(const void* data, size_t size);

}  // namespace ddprun::checkpoint
