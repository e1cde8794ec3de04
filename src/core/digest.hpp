// A 64-bit digest (FNV-1a) of the arguments of a heartbeat other than the
// worker id. Two heartbeats with the same digest would write the same row
// except for the timestamp, so the second one can stay in shared memory.
// NULL and empty values are told apart by a tag byte per field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace wh::core
{

class ArgumentDigest
{
  public:
	void AddNull() { Mix(0x00); }
	void AddBytes(const void *data, std::size_t length)
	{
		Mix(0x01);
		const auto *bytes = static_cast<const unsigned char *>(data);
		for (std::size_t i = 0; i < length; ++i)
			Mix(bytes[i]);
		// The length ends the field, so ("ab","c") differs from ("a","bc").
		for (int shift = 0; shift < 64; shift += 8)
			Mix(static_cast<unsigned char>(static_cast<std::uint64_t>(length) >> shift));
	}
	void AddText(std::string_view text) { AddBytes(text.data(), text.size()); }
	void AddInt64(std::int64_t value) { AddBytes(&value, sizeof value); }
	void AddBool(bool value) { Mix(value ? 0x03 : 0x02); }
	std::uint64_t Value() const { return state_; }

  private:
	void Mix(unsigned char byte)
	{
		state_ ^= byte;
		state_ *= 0x100000001b3ULL;
	}
	std::uint64_t state_ = 0xcbf29ce484222325ULL;
};

} // namespace wh::core
