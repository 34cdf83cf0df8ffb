using System.Buffers.Binary;

namespace BlockRepl.Nbd;

/// <summary>
/// An option request of the fixed-newstyle handshake.
/// <code>
///  C: 64 bits, 0x49484156454F5054 (ASCII 'IHAVEOPT')
///  C: 32 bits, option
///  C: 32 bits, length of option data (unsigned)
///  C: any data needed for the chosen option, of length as specified above.
/// </code>
/// </summary>
internal readonly record struct NbdOptionHeader(uint Option, uint Length)
{
    public static bool TryRead(ReadOnlySpan<byte> buffer, out NbdOptionHeader header)
    {
        if (buffer.Length < NbdProtocol.OptionHeaderSize)
        {
            header = default;
            return false;
        }

        var magic = BinaryPrimitives.ReadUInt64BigEndian(buffer);
        if (magic != NbdProtocol.OptionMagic)
        {
            NbdProtocolException.Throw($"bad option magic 0x{magic:x16}");
        }

        header = new NbdOptionHeader(
            BinaryPrimitives.ReadUInt32BigEndian(buffer[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(buffer[12..]));
        return true;
    }
}
