using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>One option reply: `S: 64 bits magic, 32 bits option, 32 bits reply type, 32 bits length, data`.</summary>
internal sealed record OptionReply(uint Option, uint Type, byte[] Data)
{
    public bool IsError => (Type & 0x8000_0000u) != 0;
}

/// <summary>
/// One transmission reply, simple or structured (all chunks up to the one flagged DONE). For READ, Data
/// holds the bytes reassembled from OFFSET_DATA/OFFSET_HOLE chunks.
/// </summary>
internal sealed record NbdReply(bool Structured, uint Error, ulong Cookie, byte[]? Data, string? ErrorMessage, IReadOnlyList<ushort> ChunkTypes);

/// <summary>
/// A deliberately small NBD client that speaks the protocol byte by byte, for the cases libnbd refuses to
/// send (unknown commands and flags, BLOCK_STATUS without a context, unknown options). One request at a time;
/// every read gives up after <see cref="ChildProcess.HangLimit"/>.
/// </summary>
internal sealed class RawNbdClient : IAsyncDisposable
{
    public const ulong NbdMagic = 0x4e42444d41474943;      // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;      // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const ushort FlagFixedNewstyle = 1 << 0;
    public const ushort FlagNoZeroes = 1 << 1;

    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepErrUnsup = 0x8000_0001;
    public const uint RepErrUnknown = 0x8000_0006;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdBlockStatus = 7;

    public const ushort CmdFlagFua = 1 << 0;
    public const ushort CmdFlagNoHole = 1 << 1;
    public const ushort CmdFlagDf = 1 << 2;
    public const ushort CmdFlagReqOne = 1 << 3;
    public const ushort CmdFlagFastZero = 1 << 4;

    public const ushort ReplyFlagDone = 1 << 0;
    public const ushort ChunkNone = 0;
    public const ushort ChunkOffsetData = 1;
    public const ushort ChunkOffsetHole = 2;
    public const ushort ChunkError = 0x8001;
    public const ushort ChunkErrorOffset = 0x8002;

    public const uint EINVAL = 22;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly CancellationTokenSource _hangGuard = new(ChildProcess.HangLimit);
    private ulong _nextCookie = 1;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public static async Task<RawNbdClient> ConnectAsync(DaemonProcess daemon)
    {
        Socket socket;
        EndPoint endPoint;
        if (daemon.UnixSocketPath is { } path)
        {
            socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            endPoint = new UnixDomainSocketEndPoint(path);
        }
        else
        {
            socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            endPoint = new IPEndPoint(IPAddress.Loopback, daemon.TcpPort);
        }

        try
        {
            await socket.ConnectAsync(endPoint);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new RawNbdClient(socket);
    }

    /// <summary>Handshake and option haggling up to (not including) the transmission phase.</summary>
    /// <returns>The server's handshake flags.</returns>
    public async Task<ushort> ReadGreetingAsync()
    {
        var greeting = await ReadExactAsync(18);
        Assert.Equal(NbdMagic, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(IHaveOpt, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        return BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
    }

    public async Task SendClientFlagsAsync(uint flags)
    {
        var buf = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(buf, flags);
        await WriteAsync(buf);
    }

    /// <summary>Greeting plus client flags FIXED_NEWSTYLE|NO_ZEROES.</summary>
    public async Task HandshakeAsync()
    {
        var flags = await ReadGreetingAsync();
        Assert.True((flags & FlagFixedNewstyle) != 0, $"server handshake flags 0x{flags:x} lack FIXED_NEWSTYLE");
        await SendClientFlagsAsync(FlagFixedNewstyle | FlagNoZeroes);
    }

    /// <summary>`C: 64 bits IHAVEOPT, 32 bits option, 32 bits length, data`.</summary>
    public async Task SendOptionAsync(uint option, ReadOnlyMemory<byte> data)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)data.Length);
        await WriteAsync(header);
        if (!data.IsEmpty)
        {
            await WriteAsync(data);
        }
    }

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        var header = await ReadExactAsync(20);
        var magic = BinaryPrimitives.ReadUInt64BigEndian(header);
        Assert.True(magic == OptionReplyMagic, $"option reply magic 0x{magic:x}, expected 0x{OptionReplyMagic:x}: stream out of sync");
        var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        var type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        Assert.True(length <= 64 * 1024, $"option reply length {length} is implausible");
        return new OptionReply(option, type, await ReadExactAsync((int)length));
    }

    public async Task NegotiateStructuredRepliesAsync()
    {
        await SendOptionAsync(OptStructuredReply, ReadOnlyMemory<byte>.Empty);
        var reply = await ReadOptionReplyAsync();
        Assert.Equal(OptStructuredReply, reply.Option);
        Assert.True(reply.Type == RepAck, $"STRUCTURED_REPLY answered with type 0x{reply.Type:x}, expected ACK");
    }

    /// <summary>OPT_GO with no info requests; returns the export size and transmission flags from INFO_EXPORT.</summary>
    public async Task<(ulong Size, ushort TransmissionFlags)> GoAsync(string exportName)
    {
        var name = Encoding.UTF8.GetBytes(exportName);
        var data = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        await SendOptionAsync(OptGo, data);

        (ulong, ushort)? export = null;
        while (true)
        {
            var reply = await ReadOptionReplyAsync();
            Assert.Equal(OptGo, reply.Option);
            Assert.False(reply.IsError, $"OPT_GO failed with reply type 0x{reply.Type:x}: {Encoding.UTF8.GetString(reply.Data)}");
            if (reply.Type == RepAck)
            {
                break;
            }

            Assert.Equal(RepInfo, reply.Type);
            if (BinaryPrimitives.ReadUInt16BigEndian(reply.Data) == 0)
            {
                Assert.Equal(12, reply.Data.Length);
                export = (BinaryPrimitives.ReadUInt64BigEndian(reply.Data.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10)));
            }
        }

        Assert.True(export.HasValue, "OPT_GO ended with ACK but sent no NBD_INFO_EXPORT");
        return export.Value;
    }

    /// <summary>Handshake, optional STRUCTURED_REPLY, then OPT_GO: ready for requests.</summary>
    public async Task<ulong> OpenAsync(string exportName, bool structuredReplies)
    {
        await HandshakeAsync();
        if (structuredReplies)
        {
            await NegotiateStructuredRepliesAsync();
        }

        return (await GoAsync(exportName)).Size;
    }

    /// <summary>`C: 32 bits magic, 16 bits flags, 16 bits type, 64 bits cookie, 64 bits offset, 32 bits length, payload`.</summary>
    public async Task<ulong> SendRequestAsync(ushort type, ushort flags, ulong offset, uint length, ReadOnlyMemory<byte> payload = default)
    {
        var cookie = _nextCookie++;
        var header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);
        await WriteAsync(header);
        if (!payload.IsEmpty)
        {
            await WriteAsync(payload);
        }

        return cookie;
    }

    /// <summary>
    /// Reads one whole reply. <paramref name="readLength"/> is the length of the READ it answers (0 for other
    /// commands): a simple reply carries no length, so the client must know how much data follows a success.
    /// </summary>
    public async Task<NbdReply> ReadReplyAsync(ulong expectedCookie, uint readLength = 0, ulong readOffset = 0)
    {
        var magicBytes = await ReadExactAsync(4);
        var magic = BinaryPrimitives.ReadUInt32BigEndian(magicBytes);
        if (magic == SimpleReplyMagic)
        {
            var rest = await ReadExactAsync(12);
            var error = BinaryPrimitives.ReadUInt32BigEndian(rest);
            var cookie = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
            Assert.Equal(expectedCookie, cookie);
            var data = error == 0 && readLength > 0 ? await ReadExactAsync((int)readLength) : null;
            return new NbdReply(false, error, cookie, data, null, []);
        }

        Assert.True(magic == StructuredReplyMagic, $"reply magic 0x{magic:x8} is neither simple nor structured: stream out of sync");
        byte[]? readData = readLength > 0 ? new byte[readLength] : null;
        var covered = readLength > 0 ? new bool[readLength] : null;
        uint firstError = 0;
        string? message = null;
        List<ushort> chunkTypes = [];
        var first = true;
        while (true)
        {
            if (!first)
            {
                var m = BinaryPrimitives.ReadUInt32BigEndian(await ReadExactAsync(4));
                Assert.True(m == StructuredReplyMagic, $"chunk magic 0x{m:x8}: stream out of sync");
            }

            first = false;
            var header = await ReadExactAsync(16);
            var flags = BinaryPrimitives.ReadUInt16BigEndian(header);
            var type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(2));
            var cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(4));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            Assert.Equal(expectedCookie, cookie);
            Assert.True(length <= 33u << 20, $"chunk length {length} is implausible");
            var payload = await ReadExactAsync((int)length);
            chunkTypes.Add(type);
            switch (type)
            {
                case ChunkOffsetData when readData is not null:
                    // Chunk offsets are export offsets; place the data relative to the request.
                    var dataOffset = BinaryPrimitives.ReadUInt64BigEndian(payload) - readOffset;
                    Cover(covered!, dataOffset, payload.Length - 8, readOffset, readLength);
                    payload.AsSpan(8).CopyTo(readData.AsSpan((int)dataOffset));
                    break;
                case ChunkOffsetHole when readData is not null:
                    var holeOffset = BinaryPrimitives.ReadUInt64BigEndian(payload) - readOffset;
                    var holeLength = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8));
                    Cover(covered!, holeOffset, (int)holeLength, readOffset, readLength);
                    readData.AsSpan((int)holeOffset, (int)holeLength).Clear();
                    break;
                case ChunkError or ChunkErrorOffset:
                    var error = BinaryPrimitives.ReadUInt32BigEndian(payload);
                    var messageLength = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
                    firstError = firstError == 0 ? error : firstError;
                    message ??= Encoding.UTF8.GetString(payload, 6, messageLength);
                    break;
                default:
                    // Any other error type has the high bit set and starts with the errno.
                    if ((type & 0x8000) != 0)
                    {
                        firstError = firstError == 0 ? BinaryPrimitives.ReadUInt32BigEndian(payload) : firstError;
                    }

                    break;
            }

            if ((flags & ReplyFlagDone) != 0)
            {
                break;
            }
        }

        if (firstError == 0 && covered is not null)
        {
            // proto.md, NBD_CMD_READ: "When no error is detected, the server MUST send enough data chunks to
            // cover the entire region described by the offset and length of the client's request."
            var gap = Array.IndexOf(covered, false);
            Assert.True(gap < 0, $"successful structured READ at {readOffset}+{readLength} left offset {readOffset + (ulong)gap} uncovered");
        }

        return new NbdReply(true, firstError, expectedCookie, firstError == 0 ? readData : null, message, chunkTypes);
    }

    /// <summary>Sends a request and reads its reply.</summary>
    public async Task<NbdReply> RequestAsync(ushort type, ushort flags, ulong offset, uint length, ReadOnlyMemory<byte> payload = default)
    {
        var cookie = await SendRequestAsync(type, flags, offset, length, payload);
        return await ReadReplyAsync(cookie, type == CmdRead ? length : 0, type == CmdRead ? offset : 0);
    }

    /// <summary>
    /// Marks a content chunk's bytes as covered. proto.md: content chunks lie within the request and "MUST NOT
    /// overlap with the bounds of any earlier content chunk".
    /// </summary>
    private static void Cover(bool[] covered, ulong relativeOffset, int length, ulong readOffset, uint readLength)
    {
        Assert.True(
            length > 0 && relativeOffset <= readLength && (ulong)length <= readLength - relativeOffset,
            $"chunk at {readOffset + relativeOffset} (+{length}) lies outside the READ at {readOffset} (+{readLength})");
        var span = covered.AsSpan((int)relativeOffset, length);
        Assert.True(!span.Contains(true), $"chunk at {readOffset + relativeOffset} (+{length}) overlaps an earlier chunk");
        span.Fill(true);
    }

    /// <summary>
    /// Reads until the server closes the connection; returns true on EOF or reset, and false if the server
    /// sends more data instead.
    /// </summary>
    public async Task<bool> ServerClosesAsync()
    {
        var buf = new byte[1];
        try
        {
            return await _stream.ReadAsync(buf, _hangGuard.Token) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public async Task<byte[]> ReadExactAsync(int count)
    {
        var buf = new byte[count];
        try
        {
            await _stream.ReadExactlyAsync(buf, _hangGuard.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"the server sent nothing for {ChildProcess.HangLimit.TotalSeconds} s while {count} bytes were expected");
        }

        return buf;
    }

    public async Task WriteAsync(ReadOnlyMemory<byte> data) => await _stream.WriteAsync(data, _hangGuard.Token);

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
        _socket.Dispose();
        _hangGuard.Dispose();
    }
}
