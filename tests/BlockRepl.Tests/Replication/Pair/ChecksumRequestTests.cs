using System.Security.Cryptography;
using BlockRepl.Core.Journal;
using BlockRepl.Replication.Lz4;
using BlockRepl.Replication.Service;
using BlockRepl.Replication.V1;
using BlockRepl.Tests.Integration;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// The receiving side of ChecksumRequest, driven by a test client speaking the Replicate stream: the feature bit,
/// hashes taken after every earlier record is applied, and requests outside the bounds ending the stream.
/// </summary>
public sealed class ChecksumRequestTests(ITestOutputHelper output)
{
    [Fact]
    public async Task ChecksumRequest_AfterABatch_HashesIncludeIt_OutOfBoundsRequestsEndTheStream()
    {
        using var dir = new TempDirectory();
        var port = ReplicaPair.FreePort();
        // This client sends no keepalives: a peer timeout of 60 s, so a test process stalled for 2 s on a busy machine
        // is not taken for a dead peer (which ends the stream under the test).
        await using var node = await DaemonProcess.StartAsync(dir, "32M", nbd: "unix:" + dir.PathOf("nbd.sock"),
            extra: ["--role", "secondary", "--listen", $"127.0.0.1:{port}", "--peer-timeout", "60s"]);
        using var channel = GrpcChannel.ForAddress(new Uri($"http://127.0.0.1:{port}"));
        var uuid = Guid.NewGuid();

        using (var call = await OpenAsync(channel, uuid))
        {
            // A write of 4 KiB of 0x42 at 8 KiB, and right behind it (no waiting for its ack) a request for the
            // hashes of [0, 64 KiB) in 4 KiB chunks: chunk 2 must already hold the write.
            await call.RequestStream.WriteAsync(new ReplicationFrame { Batch = WriteBatch(seq: 1, offset: 8192, value: 0x42) });
            await call.RequestStream.WriteAsync(new ReplicationFrame { ChecksumRequest = new ChecksumRequest { Id = 7, Offset = 0, Length = 65536, ChunkBytes = 4096 } });
            var reply = await NextChecksumReplyAsync(call);
            Assert.Equal(7UL, reply.Id);
            var hashes = reply.Sha256.ToByteArray();
            Assert.Equal(16 * 32, hashes.Length);
            var zero = SHA256.HashData(new byte[4096]);
            var written = SHA256.HashData(Enumerable.Repeat((byte)0x42, 4096).ToArray());
            for (var i = 0; i < 16; i++)
            {
                Assert.Equal(i == 2 ? written : zero, hashes.AsSpan(i * 32, 32).ToArray());
            }
        }

        (ChecksumRequest Request, string Why)[] bad =
        [
            (new ChecksumRequest { Id = 1, Offset = 0, Length = 65536, ChunkBytes = 1000 }, "chunk_bytes 1000 is outside"),
            (new ChecksumRequest { Id = 2, Offset = (32UL << 20) - 4096, Length = 8192, ChunkBytes = 4096 }, "is outside the 33554432-byte volume"),
            (new ChecksumRequest { Id = 3, Offset = 0, Length = 8 << 20, ChunkBytes = 65536 }, "length 8388608 is outside"),
            (new ChecksumRequest { Id = 4, Offset = 0, Length = 0, ChunkBytes = 4096 }, "length 0 is outside"),
        ];
        foreach (var (request, why) in bad)
        {
            using var call = await OpenAsync(channel, uuid);
            await call.RequestStream.WriteAsync(new ReplicationFrame { ChecksumRequest = request });
            var error = await Assert.ThrowsAsync<RpcException>(async () => await NextChecksumReplyAsync(call));
            output.WriteLine($"{request}: {error.StatusCode}: {error.Status.Detail}");
            Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
            Assert.Contains(why, error.Status.Detail, StringComparison.Ordinal);
        }

        await node.StopAsync();
    }

    private static async Task<AsyncDuplexStreamingCall<ReplicationFrame, ReplicationAck>> OpenAsync(GrpcChannel channel, Guid uuid)
    {
        var call = new BlockRepl.Replication.V1.Replication.ReplicationClient(channel).Replicate(deadline: DateTime.UtcNow.AddSeconds(30));
        await call.RequestStream.WriteAsync(new ReplicationFrame
        {
            Handshake = new Handshake
            {
                ProtocolVersion = 1,
                VolumeUuid = ByteString.CopyFrom(uuid.ToByteArray(bigEndian: true)),
                VolumeName = "vol",
                SizeBytes = 32UL << 20,
                NodeId = ByteString.CopyFrom(Guid.NewGuid().ToByteArray(bigEndian: true)),
                CurrentGeneration = 0x1234_5678_9abc_def0,
                Mode = ReplicationMode.Sync,
                Role = VolumeRole.Primary,
                FirstSeq = 1,
                MaxBatchBytes = ReplicationSettings.MaxBatchBytes,
            },
        });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None), "no handshake reply");
        var reply = call.ResponseStream.Current.HandshakeReply;
        Assert.True(reply.Accepted, $"handshake refused: {reply}");
        Assert.Equal((uint)ReceiverFeature.Checksums, reply.Features & (uint)ReceiverFeature.Checksums);
        return call;
    }

    private static async Task<ChecksumReply> NextChecksumReplyAsync(AsyncDuplexStreamingCall<ReplicationFrame, ReplicationAck> call)
    {
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            if (call.ResponseStream.Current.ChecksumReply is { } reply)
            {
                return reply;
            }
        }

        throw new RpcException(call.GetStatus());
    }

    private static Batch WriteBatch(ulong seq, ulong offset, byte value)
    {
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var payload = Enumerable.Repeat(value, 4096).ToArray();
        Assert.True(writer.TryAppend(JournalRecordHeader.ForWrite(seq, offset, payload.Length, fua: false), payload));
        var compressed = new byte[Lz4Codec.MaxCompressedLength(writer.UncompressedLength)];
        var length = Lz4Codec.Compress(writer.Packed, compressed);
        return new Batch
        {
            FirstSeq = seq,
            RecordCount = 1,
            UncompressedLength = (uint)writer.UncompressedLength,
            CompressedRecords = ByteString.CopyFrom(compressed, 0, length),
            Crc32C = writer.PackedCrc32C,
        };
    }
}
