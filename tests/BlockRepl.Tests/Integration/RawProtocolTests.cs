using System.Buffers.Binary;
using System.Text;
using Xunit;
using static BlockRepl.Tests.Integration.RawNbdClient;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// Requests no well-behaved client sends (libnbd refuses them locally), written byte by byte. After each
/// error the test sends a READ to prove the server consumed exactly the bad request and is still in sync.
/// Each test closes its connection before stopping the daemon: shutdown with clients attached is
/// <see cref="DaemonLifecycleTests"/>' subject, not these tests'.
/// </summary>
public sealed class RawProtocolTests
{
    [Fact]
    public async Task Handshake_Greeting_OffersFixedNewstyleAndNoZeroes()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);

        var flags = await client.ReadGreetingAsync();

        Assert.Equal(FlagFixedNewstyle | FlagNoZeroes, flags & (FlagFixedNewstyle | FlagNoZeroes));
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Handshake_UnknownClientFlags_ServerDisconnects()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);

        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(FlagFixedNewstyle | FlagNoZeroes | 0x80);
        await client.SendOptionAsync(OptList, ReadOnlyMemory<byte>.Empty);

        Assert.True(await client.ServerClosesAsync(), "server answered a client that sent unknown client flags");
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Option_Unknown0x7777With100BytePayload_RepliesErrUnsupAndStaysInSync()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.HandshakeAsync();

        // The payload looks like option headers, so a server that skips the length reads garbage options.
        var payload = new byte[100];
        for (var i = 0; i + 8 <= payload.Length; i += 8)
        {
            BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(i), IHaveOpt);
        }

        await client.SendOptionAsync(0x7777, payload);
        var reply = await client.ReadOptionReplyAsync();
        Assert.Equal(0x7777u, reply.Option);
        Assert.True(reply.Type == RepErrUnsup, $"reply type 0x{reply.Type:x}, expected NBD_REP_ERR_UNSUP (0x{RepErrUnsup:x})");

        var (size, _) = await client.GoAsync("vol");
        Assert.Equal(64UL * TestData.MiB, size);
        var read = await client.RequestAsync(CmdRead, 0, 0, 4096);
        Assert.Equal(0u, read.Error);
        Assert.NotNull(read.Data);
        TestData.AssertAllZero(read.Data, "first page of a fresh export");
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Option_GoUnknownExport_RepliesErrUnknownAndGoForVolumeStillWorks()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.HandshakeAsync();

        var name = Encoding.UTF8.GetBytes("no-such-volume");
        var data = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        await client.SendOptionAsync(OptGo, data);
        var reply = await client.ReadOptionReplyAsync();

        Assert.Equal(OptGo, reply.Option);
        Assert.True(reply.Type == RepErrUnknown, $"GO for an unknown export: reply type 0x{reply.Type:x}, expected NBD_REP_ERR_UNKNOWN (0x{RepErrUnknown:x})");
        var (size, _) = await client.GoAsync("vol");
        Assert.Equal(64UL * TestData.MiB, size);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Option_Abort_RepliesAckAndCloses()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.HandshakeAsync();

        await client.SendOptionAsync(OptAbort, ReadOnlyMemory<byte>.Empty);
        var reply = await client.ReadOptionReplyAsync();

        Assert.Equal(OptAbort, reply.Option);
        Assert.Equal(RepAck, reply.Type);
        Assert.True(await client.ServerClosesAsync(), "server kept the connection open after NBD_OPT_ABORT");
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Option_List_RepliesServerEntryForVolume()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.HandshakeAsync();

        await client.SendOptionAsync(OptList, ReadOnlyMemory<byte>.Empty);
        List<string> names = [];
        while (true)
        {
            var reply = await client.ReadOptionReplyAsync();
            Assert.Equal(OptList, reply.Option);
            if (reply.Type == RepAck)
            {
                break;
            }

            Assert.Equal(RepServer, reply.Type);
            var length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.Data);
            names.Add(Encoding.UTF8.GetString(reply.Data, 4, length));
        }

        Assert.Equal(["vol"], names);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Option_ExportNameWithNoZeroes_EntersTransmissionWithoutPadding()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.HandshakeAsync();

        await client.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes("vol"));
        // S: 64 bits size, 16 bits transmission flags, and no 124 bytes of zeroes (the client sent NO_ZEROES).
        var answer = await client.ReadExactAsync(10);
        Assert.Equal(64UL * TestData.MiB, BinaryPrimitives.ReadUInt64BigEndian(answer));

        // If padding followed, this reply would start with zeroes instead of the reply magic.
        var payload = Enumerable.Repeat((byte)0xc3, 777).ToArray();
        var write = await client.RequestAsync(CmdWrite, 0, 4097, (uint)payload.Length, payload);
        Assert.Equal(0u, write.Error);
        var read = await client.RequestAsync(CmdRead, 0, 4097, (uint)payload.Length);
        Assert.Equal(0u, read.Error);
        TestData.AssertBytesEqual(payload, read.Data, "read after write", 4097);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Command_UnknownType0x42_RepliesEinvalAndStaysInSync(bool structuredReplies)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.OpenAsync("vol", structuredReplies);

        var reply = await client.RequestAsync(0x42, 0, 0, 512);

        Assert.True(reply.Error == EINVAL, $"unknown command 0x42: error {reply.Error}, expected EINVAL");
        await AssertStillInSyncAsync(client);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    /// <summary>0x80 is no flag at all; the others are real flags that the spec allows on other commands only.</summary>
    [Theory]
    [InlineData(CmdRead, 0x80, false)]
    [InlineData(CmdRead, 0x80, true)]
    [InlineData(CmdWrite, 0x80, false)]
    [InlineData(CmdFlush, 0x80, false)]
    [InlineData(CmdTrim, 0x80, true)]
    [InlineData(CmdRead, CmdFlagNoHole, true)]
    [InlineData(CmdWrite, CmdFlagFastZero, false)]
    [InlineData(CmdFlush, CmdFlagReqOne, true)]
    public async Task Command_FlagUnknownOrInvalidForCommand_RepliesEinvalAndStaysInSync(ushort type, ushort flags, bool structuredReplies)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.OpenAsync("vol", structuredReplies);

        // The WRITE carries its payload even though it is refused: the server must still consume it.
        var length = type == CmdFlush ? 0u : 4096u;
        var payload = type == CmdWrite ? Enumerable.Repeat((byte)0x99, 4096).ToArray() : null;
        var reply = await client.RequestAsync(type, flags, 8192, length, payload);

        Assert.True(reply.Error == EINVAL, $"command {type} with flags 0x{flags:x}: error {reply.Error}, expected EINVAL");
        if (type == CmdRead && structuredReplies)
        {
            Assert.True(reply.Structured, "a READ error was sent as a simple reply although structured replies were negotiated");
        }

        await AssertStillInSyncAsync(client);
        if (type == CmdWrite)
        {
            TestData.AssertAllZero(TestData.ReadFileRange(daemon.ImagePath, 8192, 4096), "refused write's range in the image", 8192);
        }

        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task BlockStatus_WithoutNegotiatedContext_RepliesEinval()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.OpenAsync("vol", structuredReplies: true);

        var reply = await client.RequestAsync(CmdBlockStatus, 0, 0, 65536);

        Assert.True(reply.Error == EINVAL, $"BLOCK_STATUS with no meta context: error {reply.Error}, expected EINVAL");
        await AssertStillInSyncAsync(client);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Read_PastEndWithStructuredReplies_RepliesStructuredEinval()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        var size = await client.OpenAsync("vol", structuredReplies: true);

        var reply = await client.RequestAsync(CmdRead, 0, size - 512, 1024);

        Assert.True(reply.Structured, "READ error sent as a simple reply although structured replies were negotiated");
        Assert.Equal(EINVAL, reply.Error);
        await AssertStillInSyncAsync(client);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Read_DontFragmentOverDataAndHole_SendsOneDataChunk()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir);
        await using var client = await ConnectAsync(daemon);
        await client.OpenAsync("vol", structuredReplies: true);
        var payload = Enumerable.Repeat((byte)0xd1, 4096).ToArray();
        Assert.Equal(0u, (await client.RequestAsync(CmdWrite, 0, 1 << 20, 4096, payload)).Error);

        // 4 KiB of data followed by 60 KiB of hole; 64 KiB is the size the spec says DF MUST support.
        var plain = await client.RequestAsync(CmdRead, 0, 1 << 20, 65536);
        var df = await client.RequestAsync(CmdRead, CmdFlagDf, 1 << 20, 65536);

        Assert.Equal(0u, plain.Error);
        Assert.Equal(0u, df.Error);
        Assert.Equal(1, df.ChunkTypes.Count(t => t is ChunkOffsetData or ChunkOffsetHole));
        Assert.DoesNotContain(ChunkOffsetHole, df.ChunkTypes);
        var expected = new byte[65536];
        payload.CopyTo(expected, 0);
        TestData.AssertBytesEqual(expected, plain.Data, "READ over data and hole", 1 << 20);
        TestData.AssertBytesEqual(expected, df.Data, "READ with DF over data and hole", 1 << 20);
        await client.DisposeAsync();
        await daemon.StopAsync();
    }

    /// <summary>A write and a read that must both succeed and agree: the stream is still aligned on messages.</summary>
    private static async Task AssertStillInSyncAsync(RawNbdClient client)
    {
        var payload = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        var write = await client.RequestAsync(CmdWrite, 0, 100_001, (uint)payload.Length, payload);
        Assert.True(write.Error == 0, $"follow-up WRITE failed with error {write.Error}");
        var read = await client.RequestAsync(CmdRead, 0, 100_001, (uint)payload.Length);
        Assert.True(read.Error == 0, $"follow-up READ failed with error {read.Error}");
        TestData.AssertBytesEqual(payload, read.Data, "follow-up read", 100_001);
    }
}
