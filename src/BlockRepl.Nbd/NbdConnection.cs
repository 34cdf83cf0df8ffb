using System.Buffers;
using BlockRepl.Core;
using BlockRepl.Core.Hosting;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Nbd;

/// <summary>
/// One client connection: handshake, then the transmission phase until DISC, end of stream, a protocol
/// violation or server shutdown.
/// </summary>
/// <remarks>
/// The connection's own thread reads requests and runs every request that completes without waiting
/// (reads, writes to the page cache, trims, block status) inline, appending its reply to the
/// <see cref="NbdReplySender"/>. Requests that wait (FLUSH, FUA) complete on another thread and send
/// their reply whenever they finish, so replies leave out of order and a flush never stalls the reads
/// behind it. At most <see cref="MaxInFlight"/> such requests are outstanding; the reader waits beyond
/// that. Memory per connection: the receive and send buffers, plus one payload of at most 32 MiB.
/// </remarks>
internal sealed class NbdConnection : IHostedConnection
{
    public const int ReceiveBufferSize = 256 * 1024 + 4096;
    public const int SendBufferSize = 256 * 1024 + 4096;
    public const int MaxInFlight = 128;

    /// <summary>Largest data run put in one OFFSET_DATA chunk; DF reads above it get EOVERFLOW.</summary>
    private const int MaxChunkData = 256 * 1024;

    private const int MaxBlockStatusDescriptors = 1024;

    private readonly INbdTransport _transport;
    private readonly IReadOnlyDictionary<string, NbdExport> _exports;
    private readonly ILogger _log;
    private readonly NbdReceiveBuffer _rx;
    private readonly NbdReplySender _tx;
    private readonly SemaphoreSlim _inFlight = new(MaxInFlight, MaxInFlight);
    private readonly ImageExtent[] _extents = new ImageExtent[64];
    private Volume _volume = null!;
    private NbdSession _session = null!;
    private volatile bool _stopping;

    public NbdConnection(INbdTransport transport, IReadOnlyDictionary<string, NbdExport> exports, string remote, ILogger log)
    {
        _transport = transport;
        _exports = exports;
        Remote = remote;
        _log = log;
        _rx = new NbdReceiveBuffer(transport, ReceiveBufferSize);
        _tx = new NbdReplySender(transport, SendBufferSize);
    }

    public string Remote { get; }

    /// <summary>How long the client may take for each read of the handshake.</summary>
    public static TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Asks the connection to end: requests already received are answered ESHUTDOWN, requests in flight
    /// finish, replies are sent, the socket closes. Safe from any thread.
    /// </summary>
    public void Stop()
    {
        _stopping = true;
        _transport.ShutdownReceive();
    }

    public void Dispose() => _inFlight.Dispose();

    public void Run()
    {
        try
        {
            _transport.ReceiveTimeout = HandshakeTimeout;
            var handshake = new NbdHandshake(_rx, _tx, _exports);
            var session = handshake.Run();
            if (session is null)
            {
                NbdLog.HandshakeEnded(_log, Remote, handshake.EndReason ?? "no export selected");
                return;
            }

            _transport.ReceiveTimeout = null;
            _session = session;
            _volume = session.Export.Volume;
            NbdLog.ClientConnected(_log, Remote, session.Export.Name, session.StructuredReplies, session.BaseAllocation);
            using (_volume.AttachClient("nbd", Remote))
            {
                Transmission();
            }
        }
        catch (NbdProtocolException ex)
        {
            NbdLog.ProtocolViolation(_log, Remote, ex.Message);
        }
        catch (Exception ex) when (NbdReplySender.IsTransportFailure(ex))
        {
            NbdLog.ConnectionLost(_log, Remote, ex.Message);
        }
        catch (Exception ex)
        {
            NbdLog.ConnectionFailed(_log, Remote, ex);
        }
        finally
        {
            DrainInFlight();
            _tx.Flush();
            _transport.Dispose();
            NbdLog.ClientDisconnected(_log, Remote);
        }
    }

    private void Transmission()
    {
        while (true)
        {
            if (!NbdRequestHeader.TryRead(_rx.Available, out var request))
            {
                // Nothing complete is buffered: send what the burst produced, then wait for more.
                _tx.Flush();
                if (!_rx.Fill(NbdProtocol.RequestHeaderSize))
                {
                    return;
                }

                continue;
            }

            _rx.Consume(NbdProtocol.RequestHeaderSize);
            if (request.Type == NbdProtocol.CmdDisc)
            {
                return;
            }

            if (!Dispatch(request))
            {
                return;
            }
        }
    }

    /// <summary>Runs one request. Returns false when the connection must end (its payload never arrived).</summary>
    private bool Dispatch(in NbdRequestHeader request)
    {
        if (request.Type == NbdProtocol.CmdWrite)
        {
            return Write(request);
        }

        if (_stopping)
        {
            ReplySimple(NbdProtocol.ESHUTDOWN, request.Cookie, "server is shutting down");
            return true;
        }

        var error = Validate(request);
        if (error != 0)
        {
            ReplySimple(error, request.Cookie, ErrorText(error, request));
            return true;
        }

        var fua = (request.Flags & NbdProtocol.CmdFlagFua) != 0;
        try
        {
            switch (request.Type)
            {
                case NbdProtocol.CmdRead:
                    Read(request);
                    break;
                case NbdProtocol.CmdFlush:
                    Complete(request.Cookie, _volume.Flush());
                    break;
                case NbdProtocol.CmdTrim:
                    Complete(request.Cookie, _volume.Trim((long)request.Offset, request.Length, fua));
                    break;
                case NbdProtocol.CmdWriteZeroes:
                    WriteZeroes(request, fua);
                    break;
                case NbdProtocol.CmdCache:
                    _volume.Prefetch((long)request.Offset, request.Length);
                    ReplySimple(0, request.Cookie);
                    break;
                case NbdProtocol.CmdBlockStatus:
                    BlockStatus(request);
                    break;
                default:
                    throw new InvalidOperationException($"command {request.Type} passed validation");
            }
        }
        catch (Exception ex) when (ex is BlockImageException or VolumeReadOnlyException)
        {
            var code = ErrorCode(ex);
            NbdLog.RequestFailed(_log, Remote, NbdProtocol.CommandName(request.Type), request.Offset, request.Length, ex.Message);
            ReplySimple(code, request.Cookie, ex.Message);
        }

        return true;
    }

    /// <summary>
    /// The checks of proto.md "Request types" and "Error values", in the order a client would expect:
    /// unknown command, flags not valid for the command, read-only export, range and size.
    /// </summary>
    private uint Validate(in NbdRequestHeader request)
    {
        // FUA is valid on every command once NBD_FLAG_SEND_FUA is advertised (we always advertise it).
        var allowed = NbdProtocol.CmdFlagFua;
        var size = (ulong)_volume.Size;
        var inRange = request.Offset <= size && request.Length <= size - request.Offset;
        switch (request.Type)
        {
            case NbdProtocol.CmdRead:
                if (_session.StructuredReplies)
                {
                    allowed |= NbdProtocol.CmdFlagDf;
                }

                if ((request.Flags & ~allowed) != 0)
                {
                    return NbdProtocol.EINVAL;
                }

                return !inRange || request.Length > NbdProtocol.MaxPayload ? NbdProtocol.EINVAL : 0;

            case NbdProtocol.CmdFlush:
                return (request.Flags & ~allowed) != 0 ? NbdProtocol.EINVAL : 0;

            case NbdProtocol.CmdTrim:
                if ((request.Flags & ~allowed) != 0)
                {
                    return NbdProtocol.EINVAL;
                }

                if (!_volume.IsWritable)
                {
                    return NbdProtocol.EPERM;
                }

                return inRange ? 0 : NbdProtocol.EINVAL;

            case NbdProtocol.CmdWriteZeroes:
                allowed |= NbdProtocol.CmdFlagNoHole | NbdProtocol.CmdFlagFastZero;
                if ((request.Flags & ~allowed) != 0)
                {
                    return NbdProtocol.EINVAL;
                }

                if (!_volume.IsWritable)
                {
                    return NbdProtocol.EPERM;
                }

                return inRange ? 0 : NbdProtocol.ENOSPC;

            case NbdProtocol.CmdCache:
                return (request.Flags & ~allowed) != 0 || !inRange ? NbdProtocol.EINVAL : 0;

            case NbdProtocol.CmdBlockStatus:
                allowed |= NbdProtocol.CmdFlagReqOne;
                if ((request.Flags & ~allowed) != 0 || !_session.BaseAllocation)
                {
                    return NbdProtocol.EINVAL;
                }

                return !inRange || request.Length == 0 ? NbdProtocol.EINVAL : 0;

            default:
                return NbdProtocol.EINVAL;
        }
    }

    private bool Write(in NbdRequestHeader request)
    {
        if (request.Length > NbdProtocol.MaxPayload)
        {
            // We cannot answer without consuming the payload, and we will not buffer more than 32 MiB.
            NbdProtocolException.Throw($"WRITE of {request.Length} bytes exceeds the {NbdProtocol.MaxPayload}-byte maximum");
        }

        var length = (int)request.Length;
        byte[]? rented = null;
        ReadOnlySpan<byte> payload;
        if (length <= _rx.Capacity)
        {
            if (!_rx.Fill(length))
            {
                return false;
            }

            payload = _rx.Available[..length];
        }
        else
        {
            rented = ArrayPool<byte>.Shared.Rent(length);
            if (!_rx.ReadExactly(rented.AsSpan(0, length)))
            {
                ArrayPool<byte>.Shared.Return(rented);
                return false;
            }

            payload = rented.AsSpan(0, length);
        }

        try
        {
            var error = 0u;
            var allowed = NbdProtocol.CmdFlagFua;
            var size = (ulong)_volume.Size;
            if (_stopping)
            {
                error = NbdProtocol.ESHUTDOWN;
            }
            else if ((request.Flags & ~allowed) != 0)
            {
                error = NbdProtocol.EINVAL;
            }
            else if (!_volume.IsWritable)
            {
                error = NbdProtocol.EPERM;
            }
            else if (request.Offset > size || request.Length > size - request.Offset)
            {
                error = NbdProtocol.ENOSPC;
            }

            if (error != 0)
            {
                ReplySimple(error, request.Cookie, ErrorText(error, request));
                return true;
            }

            try
            {
                // The volume has consumed the payload when Write returns, even if the task is still running.
                Complete(request.Cookie, _volume.Write((long)request.Offset, payload, (request.Flags & NbdProtocol.CmdFlagFua) != 0));
            }
            catch (Exception ex) when (ex is BlockImageException or VolumeReadOnlyException)
            {
                NbdLog.RequestFailed(_log, Remote, "WRITE", request.Offset, request.Length, ex.Message);
                ReplySimple(ErrorCode(ex), request.Cookie, ex.Message);
            }

            return true;
        }
        finally
        {
            if (rented is null)
            {
                _rx.Consume(length);
            }
            else
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    private void WriteZeroes(in NbdRequestHeader request, bool fua)
    {
        var mayDeallocate = (request.Flags & NbdProtocol.CmdFlagNoHole) == 0;
        var onlyIfFast = (request.Flags & NbdProtocol.CmdFlagFastZero) != 0;
        var task = _volume.Zero((long)request.Offset, request.Length, mayDeallocate, onlyIfFast, fua);
        if (task.IsCompletedSuccessfully)
        {
            ReplySimple(task.Result ? 0 : NbdProtocol.ENOTSUP, request.Cookie, "zeroing this range would be slow");
            return;
        }

        _inFlight.Wait();
        _ = CompleteZeroLater(request.Cookie, task);
    }

    private void Read(in NbdRequestHeader request)
    {
        var offset = (long)request.Offset;
        var length = (int)request.Length;
        _volume.CountRead(length);
        if (!_session.StructuredReplies)
        {
            SimpleRead(request.Cookie, offset, length);
            return;
        }

        if ((request.Flags & NbdProtocol.CmdFlagDf) != 0 && length > MaxChunkData)
        {
            ReplySimple(NbdProtocol.EOVERFLOW, request.Cookie, $"reads above {MaxChunkData} bytes cannot be unfragmented");
            return;
        }

        long throughPeerFrom;
        lock (_tx.Gate)
        {
            throughPeerFrom = SendStructuredLocked(request.Cookie, offset, length, unfragmented: (request.Flags & NbdProtocol.CmdFlagDf) != 0);
        }

        if (throughPeerFrom >= 0)
        {
            ReadThroughPeerLater(request.Cookie, throughPeerFrom, (int)(offset + length - throughPeerFrom), structured: true);
        }
    }

    /// <summary>
    /// Sends a structured read's chunks: data, holes, or an error chunk that ends it. Returns -1 when the reply is
    /// complete, or the offset from which the rest must be read through the peer (the volume is diskless): the
    /// chunks before it are sent, the rest follows from <see cref="ReadThroughPeerLater"/>. Hold the send gate.
    /// </summary>
    private long SendStructuredLocked(ulong cookie, long offset, int length, bool unfragmented)
    {
        if (length == 0)
        {
            _tx.Commit(NbdReplyEncoder.None(_tx.Reserve(NbdProtocol.ChunkHeaderSize), cookie));
            return -1;
        }

        if (unfragmented)
        {
            // One content chunk with the zeroes of any hole present.
            return SendDataChunk(cookie, offset, length, done: true) == ChunkOutcome.ThroughPeer ? offset : -1;
        }

        var end = offset + length;
        var pos = offset;
        while (pos < end)
        {
            var count = _volume.GetExtents(pos, end - pos, _extents);
            for (var i = 0; i < count; i++)
            {
                var extent = _extents[i];
                if (extent.IsHole)
                {
                    var span = _tx.Reserve(NbdProtocol.ChunkHeaderSize + 12);
                    _tx.Commit(NbdReplyEncoder.OffsetHole(span, extent.End == end, cookie, (ulong)extent.Offset, (uint)extent.Length));
                }
                else
                {
                    for (var at = extent.Offset; at < extent.End;)
                    {
                        var piece = (int)Math.Min(MaxChunkData, extent.End - at);
                        switch (SendDataChunk(cookie, at, piece, done: at + piece == end))
                        {
                            case ChunkOutcome.Failed:
                                return -1;
                            case ChunkOutcome.ThroughPeer:
                                return at;
                        }

                        at += piece;
                    }
                }

                pos = extent.End;
            }
        }

        return -1;
    }

    private enum ChunkOutcome
    {
        Sent,
        Failed,
        ThroughPeer,
    }

    /// <summary>
    /// Reads into the send buffer first and writes the header only on success, so an I/O error is
    /// detected before any byte of the chunk is on the wire and becomes an ERROR_OFFSET chunk instead.
    /// Nothing is sent when the range must be read through the peer (diskless). Hold the send gate.
    /// </summary>
    private ChunkOutcome SendDataChunk(ulong cookie, long offset, int length, bool done)
    {
        const int HeaderSize = NbdProtocol.ChunkHeaderSize + 8;
        var span = _tx.Reserve(HeaderSize + length);
        try
        {
            if (!_volume.TryReadLocal(offset, span.Slice(HeaderSize, length)))
            {
                return ChunkOutcome.ThroughPeer;
            }
        }
        catch (BlockImageException ex)
        {
            NbdLog.RequestFailed(_log, Remote, "READ", (ulong)offset, (uint)length, ex.Message);
            var error = _tx.Reserve(NbdReplyEncoder.MaxErrorChunkSize);
            _tx.Commit(NbdReplyEncoder.ErrorChunk(error, cookie, ErrorCode(ex), ex.Message, (ulong)offset));
            return ChunkOutcome.Failed;
        }

        NbdReplyEncoder.OffsetDataHeader(span, done, cookie, (ulong)offset, length);
        _tx.Commit(HeaderSize + length);
        return ChunkOutcome.Sent;
    }

    private void SimpleRead(ulong cookie, long offset, int length)
    {
        if (!SimpleReadLocal(cookie, offset, length))
        {
            ReadThroughPeerLater(cookie, offset, length, structured: false);
        }
    }

    /// <summary>Replies to a simple read from the local image; false, having sent nothing, when it must go through the peer.</summary>
    private bool SimpleReadLocal(ulong cookie, long offset, int length)
    {
        const int HeaderSize = NbdProtocol.SimpleReplyHeaderSize;
        lock (_tx.Gate)
        {
            if (HeaderSize + length <= _tx.Capacity)
            {
                var span = _tx.Reserve(HeaderSize + length);
                try
                {
                    if (!_volume.TryReadLocal(offset, span.Slice(HeaderSize, length)))
                    {
                        return false;
                    }
                }
                catch (BlockImageException ex)
                {
                    NbdLog.RequestFailed(_log, Remote, "READ", (ulong)offset, (uint)length, ex.Message);
                    _tx.Commit(NbdReplyEncoder.SimpleReply(span, ErrorCode(ex), cookie));
                    return true;
                }

                NbdReplyEncoder.SimpleReply(span, 0, cookie);
                _tx.Commit(HeaderSize + length);
                return true;
            }

            // Larger than the send buffer: read it all first, so an error can still be reported cleanly.
            var rented = ArrayPool<byte>.Shared.Rent(HeaderSize + length);
            try
            {
                try
                {
                    if (!_volume.TryReadLocal(offset, rented.AsSpan(HeaderSize, length)))
                    {
                        return false;
                    }
                }
                catch (BlockImageException ex)
                {
                    NbdLog.RequestFailed(_log, Remote, "READ", (ulong)offset, (uint)length, ex.Message);
                    _tx.Commit(NbdReplyEncoder.SimpleReply(_tx.Reserve(HeaderSize), ErrorCode(ex), cookie));
                    return true;
                }

                NbdReplyEncoder.SimpleReply(rented, 0, cookie);
                _tx.SendDirect(rented.AsSpan(0, HeaderSize + length));
                return true;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    private void BlockStatus(in NbdRequestHeader request)
    {
        var reqOne = (request.Flags & NbdProtocol.CmdFlagReqOne) != 0;
        var limit = reqOne ? 1 : Math.Min(_extents.Length, MaxBlockStatusDescriptors);
        var count = _volume.GetExtents((long)request.Offset, request.Length, _extents.AsSpan(0, limit));
        lock (_tx.Gate)
        {
            var span = _tx.Reserve(NbdProtocol.ChunkHeaderSize + 4 + (8 * count));
            var n = NbdReplyEncoder.BlockStatusHeader(span, request.Cookie, NbdProtocol.BaseAllocationContextId, count);
            for (var i = 0; i < count; i++)
            {
                var extent = _extents[i];
                var flags = extent.IsHole ? NbdProtocol.StateHole | NbdProtocol.StateZero : 0u;
                n += NbdReplyEncoder.BlockStatusDescriptor(span[n..], (uint)extent.Length, flags);
            }

            _tx.Commit(n);
        }
    }

    /// <summary>Replies now if <paramref name="task"/> is done, otherwise when it completes (out of order).</summary>
    private void Complete(ulong cookie, ValueTask task)
    {
        if (task.IsCompletedSuccessfully)
        {
            ReplySimple(0, cookie);
            return;
        }

        _inFlight.Wait();
        _ = CompleteLater(cookie, task);
    }

    private async Task CompleteLater(ulong cookie, ValueTask task)
    {
        uint error = 0;
        try
        {
            await task.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Every completion must reply and release its in-flight slot, whatever failed.
            NbdLog.RequestFailed(_log, Remote, "async request", 0, 0, ex.Message);
            error = ErrorCode(ex);
        }

        ReplyAsync(error, cookie);
    }

    private async Task CompleteZeroLater(ulong cookie, ValueTask<bool> task)
    {
        uint error = 0;
        try
        {
            error = await task.ConfigureAwait(false) ? 0 : NbdProtocol.ENOTSUP;
        }
        catch (Exception ex)
        {
            NbdLog.RequestFailed(_log, Remote, "WRITE_ZEROES", 0, 0, ex.Message);
            error = ErrorCode(ex);
        }

        ReplyAsync(error, cookie);
    }

    /// <summary>
    /// A read the local image cannot serve (the volume is diskless): it is read through the peer into a pooled
    /// buffer and answered when the peer replies (out of order, like a write's acknowledgement), so the
    /// connection's reader never blocks on the peer. Call without holding the send gate.
    /// </summary>
    private void ReadThroughPeerLater(ulong cookie, long offset, int length, bool structured)
    {
        _inFlight.Wait();
        _ = ReplyReadLater(cookie, offset, length, structured);
    }

    private async Task ReplyReadLater(ulong cookie, long offset, int length, bool structured)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
        try
        {
            Exception? failed = null;
            try
            {
                await _volume.ReadAsync(offset, buffer.AsMemory(0, length)).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                // Every completion must reply and release its in-flight slot, whatever failed.
                NbdLog.RequestFailed(_log, Remote, "READ", (ulong)offset, (uint)length, ex.Message);
                failed = ex;
            }

            lock (_tx.Gate)
            {
                if (failed is not null)
                {
                    _tx.Commit(structured
                        ? NbdReplyEncoder.ErrorChunk(_tx.Reserve(NbdReplyEncoder.MaxErrorChunkSize), cookie, ErrorCode(failed), failed.Message, (ulong)offset)
                        : NbdReplyEncoder.SimpleReply(_tx.Reserve(NbdProtocol.SimpleReplyHeaderSize), ErrorCode(failed), cookie));
                }
                else if (!structured)
                {
                    _tx.Commit(NbdReplyEncoder.SimpleReply(_tx.Reserve(NbdProtocol.SimpleReplyHeaderSize), 0, cookie));
                    _tx.SendDirect(buffer.AsSpan(0, length));
                }
                else
                {
                    const int HeaderSize = NbdProtocol.ChunkHeaderSize + 8;
                    for (var at = 0; at < length;)
                    {
                        var piece = Math.Min(MaxChunkData, length - at);
                        NbdReplyEncoder.OffsetDataHeader(_tx.Reserve(HeaderSize), at + piece == length, cookie, (ulong)(offset + at), piece);
                        _tx.Commit(HeaderSize);
                        _tx.SendDirect(buffer.AsSpan(at, piece));
                        at += piece;
                    }
                }

                _tx.FlushLocked();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            _inFlight.Release();
        }
    }

    private void ReplyAsync(uint error, ulong cookie)
    {
        try
        {
            lock (_tx.Gate)
            {
                AppendReply(error, cookie, null);
                _tx.FlushLocked();
            }
        }
        finally
        {
            _inFlight.Release();
        }
    }

    private void ReplySimple(uint error, ulong cookie, string? message = null)
    {
        lock (_tx.Gate)
        {
            AppendReply(error, cookie, message);
        }
    }

    /// <summary>
    /// A reply without payload. Errors use an ERROR chunk once structured replies are on (required for
    /// READ, and it carries the message); successes use the 16-byte simple reply, which the spec allows
    /// for every command but READ and BLOCK_STATUS, whose successes never come here.
    /// </summary>
    private void AppendReply(uint error, ulong cookie, string? message)
    {
        if (error != 0 && _session.StructuredReplies)
        {
            var span = _tx.Reserve(NbdReplyEncoder.MaxErrorChunkSize);
            _tx.Commit(NbdReplyEncoder.ErrorChunk(span, cookie, error, message ?? string.Empty));
            return;
        }

        _tx.Commit(NbdReplyEncoder.SimpleReply(_tx.Reserve(NbdProtocol.SimpleReplyHeaderSize), error, cookie));
    }

    private void DrainInFlight()
    {
        for (var i = 0; i < MaxInFlight; i++)
        {
            _inFlight.Wait();
        }

        _inFlight.Release(MaxInFlight);
    }

    private static uint ErrorCode(Exception ex) => ex switch
    {
        BlockImageException { IsNoSpace: true } => NbdProtocol.ENOSPC,
        BlockImageException => NbdProtocol.EIO,
        VolumeReadOnlyException => NbdProtocol.EPERM,
        _ => NbdProtocol.EIO,
    };

    private string ErrorText(uint error, in NbdRequestHeader request) => error switch
    {
        NbdProtocol.EINVAL when request.Type > NbdProtocol.CmdBlockStatus || request.Type == NbdProtocol.CmdDisc =>
            $"unknown command {request.Type}",
        NbdProtocol.EINVAL when request.Type == NbdProtocol.CmdBlockStatus && !_session.BaseAllocation =>
            "BLOCK_STATUS without a negotiated metadata context",
        NbdProtocol.EINVAL => $"{NbdProtocol.CommandName(request.Type)} {request.Offset}+{request.Length} flags 0x{request.Flags:x}: invalid flags or range on a {_volume.Size}-byte export",
        NbdProtocol.ENOSPC => $"{request.Offset}+{request.Length} is past the end of the {_volume.Size}-byte export",
        NbdProtocol.EPERM => "the export is read-only",
        NbdProtocol.ESHUTDOWN => "server is shutting down",
        _ => string.Empty,
    };
}
