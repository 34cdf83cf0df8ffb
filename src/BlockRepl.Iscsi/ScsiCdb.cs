using System.Buffers.Binary;

namespace BlockRepl.Iscsi;

/// <summary>What a CDB says about its own Data-Out transfer, for iSCSI residual counts (RFC 7143 11.4.5).</summary>
internal static class ScsiCdb
{
    /// <summary>Bytes of Data-Out the command asks for, or null when it has none or this target does not know it.</summary>
    public static long? DataOutLength(byte[] cdb)
    {
        const int shift = ScsiLogicalUnit.BlockShift;
        return cdb[0] switch
        {
            0x0A => (cdb[4] == 0 ? 256L : cdb[4]) << shift,
            0x2A or 0x2E => (long)BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)) << shift,
            0xAA or 0xAE => (long)BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6)) << shift,
            0x8A or 0x8E => (long)BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)) << shift,
            0x89 => 2L * cdb[13] << shift,
            _ => null,
        };
    }
}
