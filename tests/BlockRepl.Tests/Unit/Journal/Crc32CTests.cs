using System.Text;
using BlockRepl.Core.Journal;

namespace BlockRepl.Tests.Unit.Journal;

public sealed class Crc32CTests
{
    private static readonly byte[] CheckInput = Encoding.ASCII.GetBytes("123456789");

    [Fact]
    public void Compute_CheckString_IsE3069283()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute(CheckInput));
        Assert.Equal(0xE3069283u, Crc32C.AppendSoftware(0, CheckInput));
        Assert.Equal(0xE3069283u, Crc32C.AppendHardware(0, CheckInput));
    }

    [Fact]
    public void Compute_KnownVectors_MatchRfc3720()
    {
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeroes, of 0xff, and ascending 0..31.
        Assert.Equal(0x8A9136AAu, Crc32C.Compute(new byte[32]));
        Assert.Equal(0x62A8AB43u, Crc32C.Compute(Enumerable.Repeat((byte)0xff, 32).ToArray()));
        Assert.Equal(0x46DD794Eu, Crc32C.Compute(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()));
        Assert.Equal(0u, Crc32C.Compute([]));
    }

    [Fact]
    public void HardwareAndSoftware_RandomBuffersOfEveryLength0To257_Agree()
    {
        var random = new Random(20261122);
        var buffer = new byte[257 + 8];
        for (var length = 0; length <= 257; length++)
        {
            random.NextBytes(buffer);
            // Misaligned starts too: the hardware path reads unaligned 8-byte words.
            for (var start = 0; start < 8; start++)
            {
                var data = buffer.AsSpan(start, length);
                var software = Crc32C.AppendSoftware(0, data);
                Assert.Equal(software, Crc32C.AppendHardware(0, data));
                Assert.Equal(software, Crc32C.Compute(data));
            }
        }
    }

    [Fact]
    public void Append_SplitAtEveryOffset_EqualsWholeBuffer()
    {
        var data = new byte[100];
        new Random(7).NextBytes(data);
        var whole = Crc32C.Compute(data);
        for (var split = 0; split <= data.Length; split++)
        {
            Assert.Equal(whole, Crc32C.Append(Crc32C.Compute(data.AsSpan(0, split)), data.AsSpan(split)));
            Assert.Equal(whole, Crc32C.AppendSoftware(Crc32C.AppendHardware(0, data.AsSpan(0, split)), data.AsSpan(split)));
        }
    }
}
