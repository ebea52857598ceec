// The CRC-32 of every record of a zip file, from its central directory (zip64 included). LibTorch 1.13's
// PyTorchStreamReader does not check them, so load() does: a flipped bit in a tensor is refused, not trained on.
#pragma once

#include <caffe2/serialize/read_adapter_interface.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

namespace ddprun::checkpoint {

// Record name (without the archive's top folder, as PyTorchStreamReader names them: "data.pkl", "data/0") -> CRC-32.
// Throws std::runtime_error when the directory cannot be read.
std::unordered_map<std::string, uint32_t> zip_record_checksums(const caffe2::serialize::ReadAdapterInterface& zip);

// The CRC-32 (zip's, zlib's) of `size` bytes.
uint32_t crc32_of(const void* data, size_t size);

}  // namespace ddprun::checkpoint
