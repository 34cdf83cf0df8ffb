using System.Buffers.Binary;
using System.Numerics;

namespace BlockRepl.Iscsi;

/// <summary>Opcodes, flags and limits of RFC 7143 (iSCSI), section 11.</summary>
internal static class IscsiProtocol
{
    /// <summary>Basic Header Segment length (RFC 7143 11.2.1).</summary>
    public const int BhsLength = 48;

    public const uint ReservedTag = 0xffffffff;

    // Initiator opcodes (11.2.1.2).
    public const byte OpNopOut = 0x00;
    public const byte OpScsiCommand = 0x01;
    public const byte OpTaskManagement = 0x02;
    public const byte OpLogin = 0x03;
    public const byte OpText = 0x04;
    public const byte OpDataOut = 0x05;
    public const byte OpLogout = 0x06;
    public const byte OpSnack = 0x10;

    // Target opcodes.
    public const byte OpNopIn = 0x20;
    public const byte OpScsiResponse = 0x21;
    public const byte OpTaskManagementResponse = 0x22;
    public const byte OpLoginResponse = 0x23;
    public const byte OpTextResponse = 0x24;
    public const byte OpDataIn = 0x25;
    public const byte OpLogoutResponse = 0x26;
    public const byte OpR2T = 0x31;
    public const byte OpAsyncMessage = 0x32;
    public const byte OpReject = 0x3f;

    public const byte ImmediateBit = 0x40;
    public const byte FinalBit = 0x80;

    // Reject reasons (11.17.1).
    public const byte RejectDataDigestError = 0x02;
    public const byte RejectSnackReject = 0x03;
    public const byte RejectProtocolError = 0x04;
    public const byte RejectCommandNotSupported = 0x05;
    public const byte RejectInvalidPduField = 0x09;

    /// <summary>Largest data segment this target accepts (its MaxRecvDataSegmentLength).</summary>
    public const int MaxRecvDataSegmentLength = 256 * 1024;

    /// <summary>Largest data segment accepted during login, before anything was negotiated (RFC: 8192 by default).</summary>
    public const int MaxLoginDataSegmentLength = 64 * 1024;

    /// <summary>
    /// AHS (extended CDBs, bidirectional read lengths) are not used by anything this target implements; a
    /// header announcing more than this closes the connection before it is read.
    /// </summary>
    public const int MaxAhsLength = 256;

    public static uint ReadUInt32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b[at..]);

    public static void WriteUInt32(Span<byte> b, int at, uint value) => BinaryPrimitives.WriteUInt32BigEndian(b[at..], value);

    public static int DataSegmentLength(ReadOnlySpan<byte> bhs) => (bhs[5] << 16) | (bhs[6] << 8) | bhs[7];

    public static void SetDataSegmentLength(Span<byte> bhs, int length)
    {
        bhs[5] = (byte)(length >> 16);
        bhs[6] = (byte)(length >> 8);
        bhs[7] = (byte)length;
    }

    public static int Padded(int length) => (length + 3) & ~3;

    /// <summary>Serial number arithmetic (RFC 1982, 32 bits) as RFC 7143 4.2.2.1 uses for CmdSN and StatSN.</summary>
    public static bool SerialLess(uint a, uint b) => a != b && (int)(a - b) < 0;

    /// <summary>
    /// CRC32C as iSCSI digests use it (RFC 7143 13.1, Castagnoli, initial value and final XOR 0xFFFFFFFF).
    /// <see cref="BitOperations.Crc32C(uint, ulong)"/> is the raw register update (SSE4.2 / ARMv8 instruction).
    /// </summary>
    public static uint Crc32C(ReadOnlySpan<byte> data, uint crc = 0)
    {
        crc = ~crc;
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }

        foreach (var b in data)
        {
            crc = BitOperations.Crc32C(crc, b);
        }

        return ~crc;
    }
}
