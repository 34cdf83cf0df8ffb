using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace BlockRepl.Core.Journal;

/// <summary>
/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF), the checksum
/// of a replication batch's packed records (replication.proto, <c>Batch.crc32c</c>). CRC32C("123456789") is
/// 0xE3069283.
/// <para>
/// The hardware path uses <see cref="BitOperations.Crc32C(uint, ulong)"/> (SSE4.2 <c>crc32</c> on x64, the
/// ARMv8 CRC32C instructions on arm64) eight bytes at a time. That intrinsic is the raw register update: it
/// does no initial or final inversion, so the standard value is <c>~update(~0, data)</c>. The table path is
/// the byte-at-a-time reference, used where the instructions are missing (and by tests as the oracle).
/// </para>
/// </summary>
internal static class Crc32C
{
    private const uint ReflectedPolynomial = 0x82F63B78;

    /// <summary>True when the 8-byte hardware instruction exists here (otherwise the table path runs).</summary>
    public static bool IsHardwareAccelerated { get; } =
        BitConverter.IsLittleEndian && (Sse42.X64.IsSupported || Crc32.Arm64.IsSupported);

    private static readonly uint[] Table = BuildTable();

    /// <summary>The CRC32C of <paramref name="data"/>.</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>
    /// Extends <paramref name="crc"/>, the CRC32C of some preceding bytes (0 for none), over
    /// <paramref name="data"/>: <c>Append(Compute(a), b) == Compute(a + b)</c>.
    /// </summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data) =>
        IsHardwareAccelerated ? AppendHardware(crc, data) : AppendSoftware(crc, data);

    /// <summary>The instruction path; callers check <see cref="IsHardwareAccelerated"/> (tests call it directly).</summary>
    internal static uint AppendHardware(uint crc, ReadOnlySpan<byte> data)
    {
        var state = ~crc;
        ref var start = ref MemoryMarshal.GetReference(data);
        var length = data.Length;
        var i = 0;

        // The instruction consumes the 8 bytes in memory order, which a little-endian 64-bit load preserves.
        for (; i <= length - sizeof(ulong); i += sizeof(ulong))
        {
            state = BitOperations.Crc32C(state, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i)));
        }

        for (; i < length; i++)
        {
            state = BitOperations.Crc32C(state, Unsafe.Add(ref start, i));
        }

        return ~state;
    }

    /// <summary>The table path: one lookup per byte, independent of any instruction set.</summary>
    internal static uint AppendSoftware(uint crc, ReadOnlySpan<byte> data)
    {
        var state = ~crc;
        var table = Table;
        foreach (var b in data)
        {
            state = table[(byte)(state ^ b)] ^ (state >> 8);
        }

        return ~state;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            var c = n;
            for (var k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? (c >> 1) ^ ReflectedPolynomial : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }
}
