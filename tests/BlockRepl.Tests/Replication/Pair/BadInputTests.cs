using System.Net;
using System.Net.Sockets;
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
/// What a receiver does with input it must not apply: another volume, another size, garbage bytes, a batch with
/// a bad CRC, a truncated LZ4 block, a sequence gap. Each is refused or disconnected with a log line, and the image stays untouched.
/// </summary>
public sealed class BadInputTests(ITestOutputHelper output)
{
    private const string Size = "32M";

    [Fact]
    public async Task SizeMismatch_Refused_NothingWritten()
    {
        Tool.Require("qemu-io");
        using var smallDir = new TempDirectory();
        using var bigDir = new TempDirectory();
        var port = ReplicaPair.FreePort();
        await using var small = await DaemonProcess.StartAsync(smallDir, "16M", nbd: "unix:" + smallDir.PathOf("nbd.sock"),
            extra: ["--role", "secondary", "--listen", $"127.0.0.1:{port}"]);
        var image = Path.Combine(DaemonProcess.DataDirOf(smallDir), "vol.img");
        var before = await TestData.Sha256OfFileAsync(image);
        await using var big = await DaemonProcess.StartAsync(bigDir, Size, nbd: "unix:" + bigDir.PathOf("nbd.sock"),
            extra: ["--role", "primary", "--peer", $"http://127.0.0.1:{port}"]);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", big.NbdUri, "-c", "write -P 0x77 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();

        var a = await ReplicaPair.WaitForAsync(big, v => (v.GetProperty("lastError").GetString() ?? "").Contains("size mismatch", StringComparison.Ordinal),
            "the size refusal in the primary's status");
        output.WriteLine(a.GetProperty("lastError").GetString());
        Assert.Equal("connecting", ReplicaPair.Str(a, "connection"));
        await small.WaitForLogAsync("size mismatch: sender has 33554432 bytes, this node 16777216");
        await big.StopAsync();
        await small.StopAsync();
        Assert.Equal(before, await TestData.Sha256OfFileAsync(image));
    }

    [Fact]
    public async Task WrongVolumeUuid_RefusedAsDifferentVolumes_NothingWritten()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", Size);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x21 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        await pair.A.StopAsync();
        var before = await TestData.Sha256OfFileAsync(pair.ImageB);

        // An unrelated primary (its own new volume uuid) on A's port, pointing at B.
        using var other = new TempDirectory();
        await using var stranger = await DaemonProcess.StartAsync(other, Size, nbd: "unix:" + other.PathOf("nbd.sock"),
            extra: ["--role", "primary", "--listen", $"127.0.0.1:{pair.PortA}", "--peer", $"http://127.0.0.1:{pair.PortB}"]);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", stranger.NbdUri, "-c", "write -P 0x66 0 2M"], Tool.DefaultTimeout)).EnsureSuccess();

        var s = await ReplicaPair.WaitForAsync(stranger, v => (v.GetProperty("lastError").GetString() ?? "").Contains("different volumes", StringComparison.Ordinal),
            "the uuid refusal in the stranger's status");
        output.WriteLine(s.GetProperty("lastError").GetString());
        await pair.B!.WaitForLogAsync("is not this node's");
        await stranger.StopAsync();
        await pair.B!.StopAsync();
        Assert.Equal(before, await TestData.Sha256OfFileAsync(pair.ImageB));
    }

    [Fact]
    public async Task GarbageBytesOnTheReplicationPort_ConnectionDropped_DaemonServesOn()
    {
        using var dir = new TempDirectory();
        var port = ReplicaPair.FreePort();
        await using var node = await DaemonProcess.StartAsync(dir, Size, nbd: "unix:" + dir.PathOf("nbd.sock"),
            extra: ["--role", "secondary", "--listen", $"127.0.0.1:{port}"]);
        var image = Path.Combine(DaemonProcess.DataDirOf(dir), "vol.img");
        var before = await TestData.Sha256OfFileAsync(image);

        foreach (var garbage in new[] { TestData.RandomBytes(4096, 1), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray().Concat(TestData.RandomBytes(512, 2)).ToArray() })
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
            await socket.SendAsync(garbage);
            socket.Shutdown(SocketShutdown.Send);
            var buffer = new byte[65536];
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token) > 0)
            {
            }
        }

        await node.WaitForLogAsync("closed without a gRPC request");
        var v = await ReplicaPair.VolumeAsync(node); // still answering
        Assert.Equal("secondary", ReplicaPair.Str(v, "role"));
        await node.StopAsync();
        Assert.Equal(before, await TestData.Sha256OfFileAsync(image));
    }

    [Fact]
    public async Task BadCrcTruncatedLz4EarlySeqAndGap_StreamEnded_BadBatchNotApplied()
    {
        using var dir = new TempDirectory();
        var port = ReplicaPair.FreePort();
        // The test client sends no keepalives: 60 s, so a stall of the busy test process is not a dead peer.
        await using var node = await DaemonProcess.StartAsync(dir, Size, nbd: "unix:" + dir.PathOf("nbd.sock"),
            extra: ["--role", "secondary", "--listen", $"127.0.0.1:{port}", "--peer-timeout", "60s"]);
        var image = Path.Combine(DaemonProcess.DataDirOf(dir), "vol.img");
        var zeroes = await TestData.Sha256OfFileAsync(image);
        using var channel = GrpcChannel.ForAddress(new Uri($"http://127.0.0.1:{port}"));
        var uuid = Guid.NewGuid();

        // A batch whose CRC does not match its records: DATA_LOSS, nothing applied.
        var crc = await SendBatchesAsync(channel, uuid, handshakeFirstSeq: 1, [(1, 8192, true)]);
        output.WriteLine($"bad CRC: {crc?.StatusCode}: {crc?.Status.Detail}");
        Assert.NotNull(crc);
        Assert.Equal(StatusCode.DataLoss, crc.StatusCode);
        Assert.Contains("CRC", crc.Status.Detail, StringComparison.OrdinalIgnoreCase);
        await node.WaitForLogAsync("nothing of it was applied");
        Assert.Equal(zeroes, await TestData.Sha256OfFileAsync(image));

        // A batch whose LZ4 block is cut in half (a short or mangled message): DATA_LOSS, nothing applied.
        var lz4 = await SendBatchesAsync(channel, uuid, handshakeFirstSeq: 1, [(1, 8192, false)], truncateLz4: true);
        output.WriteLine($"truncated LZ4: {lz4?.StatusCode}: {lz4?.Status.Detail}");
        Assert.NotNull(lz4);
        Assert.Equal(StatusCode.DataLoss, lz4.StatusCode);
        Assert.Contains("LZ4 block does not decompress", lz4.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(zeroes, await TestData.Sha256OfFileAsync(image));

        // A first batch that starts before the seq the handshake announced: FAILED_PRECONDITION, nothing applied.
        var early = await SendBatchesAsync(channel, uuid, handshakeFirstSeq: 5, [(3, 8192, false)]);
        output.WriteLine($"early: {early?.StatusCode}: {early?.Status.Detail}");
        Assert.NotNull(early);
        Assert.Equal(StatusCode.FailedPrecondition, early.StatusCode);
        Assert.Equal(zeroes, await TestData.Sha256OfFileAsync(image));

        // A valid batch (applied: the control), then one that skips seq 2: FAILED_PRECONDITION, not applied.
        var gap = await SendBatchesAsync(channel, uuid, handshakeFirstSeq: 1, [(1, 8192, false), (3, 16384, false)]);
        output.WriteLine($"gap: {gap?.StatusCode}: {gap?.Status.Detail}");
        Assert.NotNull(gap);
        Assert.Equal(StatusCode.FailedPrecondition, gap.StatusCode);
        Assert.Contains("sequence gap: expected batch at seq 2, got seq 3", gap.Status.Detail, StringComparison.Ordinal);
        await node.StopAsync();
        Assert.True(TestData.ReadFileRange(image, 8192, 4096).AsSpan().IndexOfAnyExcept((byte)0x42) < 0, "the valid batch before the gap was not applied");
        TestData.AssertAllZero(TestData.ReadFileRange(image, 16384, 4096), "the batch after the gap");
    }

    /// <summary>
    /// Opens a Replicate stream as a primary would, sends one-record batches (4 KiB of 0x42 at an offset, FUA),
    /// and returns the error that ended the stream, or null when the last batch was acknowledged durable.
    /// <paramref name="truncateLz4"/> sends only the first half of each batch's LZ4 block.
    /// </summary>
    private static async Task<RpcException?> SendBatchesAsync(
        GrpcChannel channel, Guid uuid, ulong handshakeFirstSeq, (ulong Seq, ulong Offset, bool CorruptCrc)[] batches, bool truncateLz4 = false)
    {
        using var call = new BlockRepl.Replication.V1.Replication.ReplicationClient(channel).Replicate(deadline: DateTime.UtcNow.AddSeconds(30));
        var handshake = new Handshake
        {
            ProtocolVersion = 1,
            VolumeUuid = ByteString.CopyFrom(uuid.ToByteArray(bigEndian: true)),
            VolumeName = "vol",
            SizeBytes = 32UL << 20,
            NodeId = ByteString.CopyFrom(Guid.NewGuid().ToByteArray(bigEndian: true)),
            CurrentGeneration = 0x1234_5678_9abc_def0,
            Mode = ReplicationMode.Sync,
            Role = VolumeRole.Primary,
            FirstSeq = handshakeFirstSeq,
            MaxBatchBytes = ReplicationSettings.MaxBatchBytes,
        };
        await call.RequestStream.WriteAsync(new ReplicationFrame { Handshake = handshake });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None), "no handshake reply");
        var reply = call.ResponseStream.Current.HandshakeReply;
        Assert.True(reply.Accepted, $"handshake refused: {reply}");

        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var payload = Enumerable.Repeat((byte)0x42, 4096).ToArray();
        foreach (var (seq, offset, corruptCrc) in batches)
        {
            writer.Reset();
            Assert.True(writer.TryAppend(JournalRecordHeader.ForWrite(seq, offset, payload.Length, fua: true), payload));
            var compressed = new byte[Lz4Codec.MaxCompressedLength(writer.UncompressedLength)];
            var length = Lz4Codec.Compress(writer.Packed, compressed);
            if (truncateLz4)
            {
                length /= 2;
            }

            try
            {
                await call.RequestStream.WriteAsync(new ReplicationFrame
                {
                    Batch = new Batch
                    {
                        FirstSeq = seq,
                        RecordCount = 1,
                        UncompressedLength = (uint)writer.UncompressedLength,
                        CompressedRecords = ByteString.CopyFrom(compressed, 0, length),
                        Crc32C = corruptCrc ? writer.PackedCrc32C ^ 0x1 : writer.PackedCrc32C,
                    },
                });
            }
            catch (RpcException)
            {
                break; // the receiver already ended the stream; its status is read below
            }
        }

        var lastSeq = batches[^1].Seq;
        try
        {
            while (await call.ResponseStream.MoveNext(CancellationToken.None))
            {
                if (call.ResponseStream.Current.DurableSeq >= lastSeq)
                {
                    return null;
                }
            }

            return new RpcException(call.GetStatus());
        }
        catch (RpcException ex)
        {
            return ex;
        }
    }
}
