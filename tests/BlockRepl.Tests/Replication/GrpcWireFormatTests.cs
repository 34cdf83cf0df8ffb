using System.Buffers;
using BlockRepl.Replication.Grpc;
using BlockRepl.Replication.V1;
using Google.Protobuf;

namespace BlockRepl.Tests.Replication;

/// <summary>The pieces of the gRPC wire format on their own: grpc-timeout, grpc-message, message framing.</summary>
public sealed class GrpcWireFormatTests
{
    [Theory]
    [InlineData("1H", 3600_000)]
    [InlineData("2M", 120_000)]
    [InlineData("3S", 3000)]
    [InlineData("250m", 250)]
    [InlineData("1500u", 1.5)]
    [InlineData("99999999n", 100)]
    public void GrpcTimeout_ValidValue_Parses(string value, double milliseconds)
    {
        Assert.True(GrpcTimeout.TryParse(value, out var timeout));
        Assert.Equal(milliseconds, timeout.TotalMilliseconds, precision: 3);
    }

    [Theory]
    [InlineData("")]
    [InlineData("S")]
    [InlineData("10")]
    [InlineData("10s")]
    [InlineData("123456789S")]
    [InlineData("-1S")]
    [InlineData("1 S")]
    public void GrpcTimeout_MalformedValue_IsRejected(string value) =>
        Assert.False(GrpcTimeout.TryParse(value, out _));

    [Theory]
    [InlineData(0.0001, "100n")]
    [InlineData(250, "250000u")]
    [InlineData(30_000, "30000000u")]
    [InlineData(300_000, "300000m")]
    [InlineData(864_000_000, "864000S")]
    [InlineData(864_000_000_000, "14400000M")]
    public void GrpcTimeout_Format_UsesFinestUnitThatFits(double milliseconds, string expected) =>
        Assert.Equal(expected, GrpcTimeout.Format(TimeSpan.FromMilliseconds(milliseconds)));

    [Fact]
    public void GrpcTimeout_FormatThenParse_NeverShortens()
    {
        foreach (var ms in new[] { 0.5, 1, 999.9999, 12_345.678, 86_400_000.0 * 400 })
        {
            var timeout = TimeSpan.FromMilliseconds(ms);
            Assert.True(GrpcTimeout.TryParse(GrpcTimeout.Format(timeout), out var parsed));
            Assert.True(parsed >= timeout, $"{timeout} became {parsed}");
        }
    }

    [Theory]
    [InlineData("plain ascii", "plain ascii")]
    [InlineData("100%", "100%25")]
    [InlineData("tab\there", "tab%09here")]
    [InlineData("é", "%C3%A9")]
    [InlineData("日", "%E6%97%A5")]
    public void PercentEncoding_Encode_MatchesSpec(string value, string encoded)
    {
        Assert.Equal(encoded, PercentEncoding.Encode(value));
        Assert.Equal(value, PercentEncoding.Decode(encoded));
    }

    [Theory]
    [InlineData("50%", "50%")]
    [InlineData("%zz", "%zz")]
    [InlineData("%4", "%4")]
    public void PercentEncoding_DecodeInvalidEscape_KeepsText(string value, string decoded) =>
        Assert.Equal(decoded, PercentEncoding.Decode(value));

    [Fact]
    public void GrpcFraming_TwoMessagesSplitAtEveryOffset_ParseTheSame()
    {
        var first = new ReplicationAck { ReceivedSeq = 1, AppliedSeq = 2, DurableSeq = 3 };
        var second = new ReplicationAck();
        var bytes = Frame(first).Concat(Frame(second)).ToArray();

        for (var split = 0; split <= bytes.Length; split++)
        {
            var sequence = Split(bytes, split);
            var messages = new List<ReplicationAck>();
            while (GrpcFraming.TryReadMessage(ref sequence, 1024, out var payload))
            {
                messages.Add(ReplicationAck.Parser.ParseFrom(payload));
            }

            Assert.True(sequence.IsEmpty, $"split {split}: {sequence.Length} bytes left");
            Assert.Equal([first, second], messages);
        }
    }

    [Fact]
    public void GrpcFraming_PartialMessage_ReturnsFalseAndKeepsBuffer()
    {
        var bytes = Frame(new ReplicationAck { ReceivedSeq = 42 });
        for (var length = 0; length < bytes.Length; length++)
        {
            var sequence = new ReadOnlySequence<byte>(bytes, 0, length);
            Assert.False(GrpcFraming.TryReadMessage(ref sequence, 1024, out _));
            Assert.Equal(length, sequence.Length);
        }
    }

    [Fact]
    public void GrpcFraming_LengthOverLimit_ThrowsResourceExhaustedFromPrefixAlone()
    {
        var sequence = new ReadOnlySequence<byte>([0, 0x7F, 0xFF, 0xFF, 0xFF]);
        var ex = Assert.Throws<RpcException>(() => GrpcFraming.TryReadMessage(ref sequence, 4 * 1024 * 1024, out _));
        Assert.Equal(StatusCode.ResourceExhausted, ex.StatusCode);
    }

    [Theory]
    [InlineData(1, (int)StatusCode.Unimplemented)]
    [InlineData(2, (int)StatusCode.Internal)]
    public void GrpcFraming_BadCompressedFlag_Throws(byte flag, int expectedCode)
    {
        var expected = (StatusCode)expectedCode;
        var sequence = new ReadOnlySequence<byte>([flag, 0, 0, 0, 0]);
        var ex = Assert.Throws<RpcException>(() => GrpcFraming.TryReadMessage(ref sequence, 1024, out _));
        Assert.Equal(expected, ex.StatusCode);
    }

    [Theory]
    [InlineData("application/grpc", true)]
    [InlineData("application/grpc+proto", true)]
    [InlineData("application/grpc; charset=utf-8", true)]
    [InlineData("application/grpc-web", false)]
    [InlineData("application/grpc+json", false)]
    [InlineData("application/json", false)]
    [InlineData(null, false)]
    public void GrpcProtocol_ContentType_AcceptsGrpcAndProtoOnly(string? contentType, bool expected) =>
        Assert.Equal(expected, GrpcProtocol.IsGrpcContentType(contentType));

    private static byte[] Frame<T>(T message)
        where T : IMessage
    {
        var size = message.CalculateSize();
        var bytes = new byte[GrpcFraming.HeaderSize + size];
        GrpcFraming.WriteMessage(bytes, message, size);
        return bytes;
    }

    private static ReadOnlySequence<byte> Split(byte[] bytes, int at)
    {
        var head = new Segment(bytes.AsMemory(0, at), 0);
        var tail = head.Append(bytes.AsMemory(at));
        return new ReadOnlySequence<byte>(head, 0, tail, tail.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
