using System.Buffers;
using BlockRepl.Replication.Service;
using BlockRepl.Replication.V1;
using Google.Protobuf;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>
/// The receiver's pooled batch parser against protobuf's generated one: for every input either the fast path
/// declines (null) or it yields exactly the message the generated parser yields, and every buffer it lends goes back.
/// </summary>
public sealed class ReplicationWireTests
{
    [Fact]
    public void GeneratedBatchFrames_ParseLikeProtobuf_AndTheirBuffersReturn()
    {
        var random = new Random(7);
        for (var i = 0; i < 500; i++)
        {
            var records = new byte[random.Next(4) == 0 ? 0 : random.Next(1, 70_000)];
            random.NextBytes(records);
            var frame = new ReplicationFrame
            {
                Batch = new Batch
                {
                    FirstSeq = RandomUlong(random),
                    RecordCount = (uint)random.NextInt64(0, 1L << 32),
                    UncompressedLength = (uint)random.Next(),
                    CompressedRecords = ByteString.CopyFrom(records),
                    Crc32C = (uint)random.NextInt64(0, 1L << 32),
                    SenderLastSeq = RandomUlong(random),
                    SenderUnsentBytes = RandomUlong(random),
                    Stored = random.Next(2) == 0,
                    SenderAhead = random.Next(2) == 0,
                },
            };
            var bytes = frame.ToByteArray();

            // Also split over several segments, as Kestrel's pipe delivers a large message.
            var parsed = ReplicationWire.TryParseBatchFrame(Segmented(bytes, random.Next(1, 9)));
            Assert.NotNull(parsed);
            Assert.Equal(frame, parsed);
            Assert.Equal(ReplicationFrame.Parser.ParseFrom(bytes), parsed);
            ReplicationWire.ReturnRecords(parsed.Batch);
        }

        Assert.Equal(0, ReplicationWire.LeasedBuffers);
    }

    [Fact]
    public void OtherFramesAndUnusualEncodings_GoToTheGeneratedParser_OrParseTheSame()
    {
        Assert.Null(ReplicationWire.TryParseBatchFrame(new ReadOnlySequence<byte>(new ReplicationFrame { Ping = new Ping { Id = 3 } }.ToByteArray())));
        Assert.Null(ReplicationWire.TryParseBatchFrame(new ReadOnlySequence<byte>([])));

        // A repeated compressed_records (the last wins), written by hand.
        var batch = new Batch { FirstSeq = 5, CompressedRecords = ByteString.CopyFrom(1, 2, 3) };
        var inner = batch.ToByteArray().Concat(new byte[] { (4 << 3) | 2, 2, 9, 9 }).ToArray();
        var bytes = new byte[] { (2 << 3) | 2, (byte)inner.Length }.Concat(inner).ToArray();
        var parsed = ReplicationWire.TryParseBatchFrame(new ReadOnlySequence<byte>(bytes));
        Assert.NotNull(parsed);
        Assert.Equal(5UL, parsed.Batch.FirstSeq);
        Assert.Equal(new byte[] { 9, 9 }, parsed.Batch.CompressedRecords.ToByteArray());
        Assert.Equal(ReplicationFrame.Parser.ParseFrom(bytes), parsed);
        ReplicationWire.ReturnRecords(parsed.Batch);

        // An unknown field: only the generated message keeps it, so the fast path declines.
        var unknown = batch.ToByteArray().Concat(new byte[] { (15 << 3) | 0, 0x96, 0x01 }).ToArray();
        Assert.Null(ReplicationWire.TryParseBatchFrame(new ReadOnlySequence<byte>(new byte[] { (2 << 3) | 2, (byte)unknown.Length }.Concat(unknown).ToArray())));
        Assert.Equal(0, ReplicationWire.LeasedBuffers);
    }

    [Fact]
    public void RandomAndCorruptedInputs_NeverDisagreeWithProtobuf_NorLeakBuffers()
    {
        var random = new Random(11);
        var good = new ReplicationFrame
        {
            Batch = new Batch { FirstSeq = 1, RecordCount = 2, UncompressedLength = 9000, CompressedRecords = ByteString.CopyFrom(new byte[300]), Crc32C = 77 },
        }.ToByteArray();
        for (var i = 0; i < 20_000; i++)
        {
            byte[] input;
            if (i % 2 == 0)
            {
                input = (byte[])good.Clone();
                for (var flips = random.Next(1, 4); flips > 0; flips--)
                {
                    input[random.Next(input.Length)] = (byte)random.Next(256);
                }

                if (random.Next(4) == 0)
                {
                    input = input[..random.Next(input.Length)];
                }
            }
            else
            {
                input = new byte[random.Next(0, 40)];
                random.NextBytes(input);
                if (input.Length > 1)
                {
                    input[0] = (2 << 3) | 2;
                    input[1] = (byte)(input.Length - 2);
                }
            }

            ReplicationFrame? expected;
            try
            {
                expected = ReplicationFrame.Parser.ParseFrom(input);
            }
            catch (InvalidProtocolBufferException)
            {
                expected = null;
            }

            var fast = ReplicationWire.TryParseBatchFrame(new ReadOnlySequence<byte>(input));
            if (fast is not null)
            {
                Assert.NotNull(expected);
                Assert.Equal(expected, fast);
                ReplicationWire.ReturnRecords(fast.Batch);
            }
        }

        Assert.Equal(0, ReplicationWire.LeasedBuffers);
    }

    private static ulong RandomUlong(Random random) => random.Next(3) switch
    {
        0 => (ulong)random.Next(128),
        1 => (ulong)random.NextInt64(),
        _ => ulong.MaxValue - (ulong)random.Next(1000),
    };

    private static ReadOnlySequence<byte> Segmented(byte[] bytes, int pieces)
    {
        if (pieces == 1 || bytes.Length < pieces)
        {
            return new ReadOnlySequence<byte>(bytes);
        }

        var size = bytes.Length / pieces;
        Segment? first = null, last = null;
        for (var start = 0; start < bytes.Length; start += size)
        {
            var piece = bytes.AsMemory(start, Math.Min(size, bytes.Length - start));
            last = last is null ? first = new Segment(piece, 0) : last.Append(piece);
        }

        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
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
