using System.Buffers;
using System.Collections.Concurrent;
using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;
using BlockRepl.Replication.Lz4;
using BlockRepl.Replication.V1;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using ConnectionState = BlockRepl.Core.ConnectionState;
using CoreRole = BlockRepl.Core.VolumeRole;
using DiskState = BlockRepl.Core.DiskState;
using WireRole = BlockRepl.Replication.V1.VolumeRole;

namespace BlockRepl.Replication.Service;

/// <summary>
/// The receiving side of the Replication service: checks the handshake against the generations table, then
/// applies batches in sequence order to the local (secondary) volume and acknowledges them cumulatively.
/// </summary>
/// <remarks>
/// A batch is checked whole before any record of it is applied: the seq must follow the last one, the LZ4 block
/// must decompress to exactly the announced length, and the CRC32C, record count and seqs must match
/// (<see cref="JournalBatchReader"/>). Anything else ends the stream with an error status and a log line; the
/// sender then reconnects and resyncs from its bitmap. A second stream for a volume replaces the first (the
/// old sender is gone, or it would not reconnect).
/// </remarks>
internal sealed class ReplicaService(IReadOnlyDictionary<string, Volume> volumes, ReplicationSettings settings, ILogger logger)
    : ReplicationServiceBase
{
    private readonly ConcurrentDictionary<string, (CancellationTokenSource Cancel, Task Done)> _active = new(StringComparer.Ordinal);
    private volatile bool _stopping;

    public override async Task Replicate(
        IAsyncStreamReader<ReplicationFrame> requests, IServerStreamWriter<ReplicationAck> responses, ServerCallContext context)
    {
        var remote = context.Peer;
        using var streamCancel = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken);
        var token = streamCancel.Token;

        streamCancel.CancelAfter(settings.PeerTimeout * 5);
        if (!await requests.MoveNext(token).ConfigureAwait(false))
        {
            return;
        }

        if (requests.Current.BodyCase != ReplicationFrame.BodyOneofCase.Handshake)
        {
            if (requests.Current.Batch is { } stray)
            {
                ReplicationWire.ReturnRecords(stray); // its pooled buffer is never applied
            }

            ReplicationLog.StreamRejected(logger, remote, $"first frame is {requests.Current.BodyCase}, not a handshake");
            throw new RpcException(new Status(StatusCode.InvalidArgument, "the first frame of a replication stream must be a handshake"));
        }

        var handshake = requests.Current.Handshake;
        if (_stopping)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "the daemon is stopping"));
        }

        var (reply, volume, decision) = Decide(handshake);
        if (!reply.Accepted)
        {
            ReplicationLog.StreamRefused(logger, remote, reply.Message);
            volume?.ReportError($"refused a replication stream from {remote}: {reply.Message}");
            await responses.WriteAsync(new ReplicationAck { HandshakeReply = reply }, token).ConfigureAwait(false);
            return;
        }

        var volumeName = volume!.Name;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        (CancellationTokenSource Cancel, Task Done)? previous = null;
        _active.AddOrUpdate(volumeName, (streamCancel, done.Task), (_, old) =>
        {
            previous = old;
            return (streamCancel, done.Task);
        });
        try
        {
            if (previous is { } old)
            {
                // One stream per volume: the old one (its sender is gone, or it would not reconnect) is cancelled
                // and awaited, so two streams never apply to one image at once. Its handler returns only after the
                // batch it is applying is done.
                await TakeOverAsync(old, streamCancel.Token).ConfigureAwait(false);
            }

            if (reply.Fresh)
            {
                volume.Target.AdoptVolumeUuid(new Guid(handshake.VolumeUuid.Span, bigEndian: true));
            }

            streamCancel.CancelAfter(Timeout.InfiniteTimeSpan);
            var firstSeq = handshake.FirstSeq;
            using var stream = new ReceiveStream(volume, settings, responses, firstSeq - 1, (int)handshake.MaxBatchBytes, handshake.Mode == V1.ReplicationMode.Async);
            await responses.WriteAsync(new ReplicationAck
            {
                HandshakeReply = reply,
                ReceivedSeq = firstSeq - 1,
                AppliedSeq = firstSeq - 1,
                DurableSeq = firstSeq - 1,
            }, token).ConfigureAwait(false);
            volume.Target.SetConnection(ConnectionState.Connected);
            ReplicationLog.StreamAccepted(logger, volumeName, remote, decision);

            try
            {
                await stream.RunAsync(requests, streamCancel, token).ConfigureAwait(false);
                ReplicationLog.StreamEnded(logger, volumeName, remote, "the sender closed the stream");
            }
            catch (ReplicationProtocolException ex)
            {
                ReplicationLog.StreamRejected(logger, remote, ex.Message);
                volume.ReportError($"replication stream from {remote} rejected: {ex.Message}");
                throw new RpcException(new Status(ex.Code, ex.Message));
            }
            catch (OperationCanceledException) when (!context.CancellationToken.IsCancellationRequested)
            {
                var why = stream.SilentTooLong ? $"no frame for {settings.PeerTimeout.TotalSeconds:0.#} s (dead peer)"
                    : _stopping ? "this daemon is stopping" : "replaced by a newer stream";
                ReplicationLog.StreamEnded(logger, volumeName, remote, why);
                volume.ReportError($"replication stream from {remote} ended: {why}");
                throw new RpcException(new Status(StatusCode.Unavailable, why));
            }
            catch (Exception ex) when (ex is BlockImageException or IOException)
            {
                ReplicationLog.StreamEnded(logger, volumeName, remote, $"local I/O failed: {ex.Message}");
                volume.ReportError($"applying replicated writes failed: {ex.Message}");
                throw new RpcException(new Status(StatusCode.Unavailable, $"the receiver's image failed: {ex.Message}"));
            }
            catch (Exception ex) when (ex is RpcException or OperationCanceledException)
            {
                ReplicationLog.StreamEnded(logger, volumeName, remote, ex.Message);
                throw;
            }
        }
        finally
        {
            if (previous is { } replaced && !replaced.Done.IsCompleted)
            {
                // Stay registered until the stream this one replaced has really ended (even when this one gives up
                // early), so a third stream can never apply beside it.
                await replaced.Done.WaitAsync(TimeSpan.FromSeconds(60), CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }

            if (volume.Connection is ConnectionState.Connected or ConnectionState.SyncTarget or ConnectionState.Behind)
            {
                volume.Target.SetConnection(volume.HasPeer ? ConnectionState.Connecting : ConnectionState.Standalone);
            }

            _active.TryRemove(new KeyValuePair<string, (CancellationTokenSource, Task)>(volumeName, (streamCancel, done.Task)));
            done.TrySetResult();
        }
    }

    /// <summary>Ends every stream and accepts no new one: the daemon is stopping.</summary>
    public void Stop()
    {
        _stopping = true;
        CancelAll();
    }

    /// <summary>Waits (bounded) until every stream's handler has returned, so the volume can be closed safely.</summary>
    public async Task WaitForStreamsAsync(TimeSpan timeout)
    {
        var running = _active.Values.Select(e => e.Done).ToArray();
        if (running.Length > 0)
        {
            await Task.WhenAny(Task.WhenAll(running), Task.Delay(timeout)).ConfigureAwait(false);
        }
    }

    /// <summary>Ends every stream (daemon stopping, or a forced promotion).</summary>
    public void CancelAll()
    {
        foreach (var (cancel, _) in _active.Values)
        {
            try
            {
                cancel.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    public bool HasStream(string volume) => _active.ContainsKey(volume);

    private static async Task TakeOverAsync((CancellationTokenSource Cancel, Task Done) old, CancellationToken token)
    {
        try
        {
            await old.Cancel.CancelAsync().ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            // it ended already
        }

        await old.Done.WaitAsync(TimeSpan.FromSeconds(30), token).ConfigureAwait(false);
    }

    /// <summary>At most this many dirty runs go in a handshake reply (about 2 MiB); more are widened (a superset).</summary>
    private const int MaxDirtyPairs = LocksAndLimits.MaxDirtyPairs;

    private (HandshakeReply Reply, Volume? Volume, string Decision) Decide(Handshake h)
    {
        HandshakeReply Refuse(RefuseReason reason, string message, Volume? v = null) =>
            Fill(new HandshakeReply { Accepted = false, RefuseReason = reason, Message = message }, v);

        if (h.ProtocolVersion != ReplicationSettings.ProtocolVersion)
        {
            return (Refuse(RefuseReason.ProtocolVersion, $"protocol version {h.ProtocolVersion} is not supported (this node speaks {ReplicationSettings.ProtocolVersion})"), null, "");
        }

        if (!volumes.TryGetValue(h.VolumeName, out var volume))
        {
            return (Refuse(RefuseReason.UnknownVolume, $"no volume named '{h.VolumeName}' here"), null, "");
        }

        if (h.SizeBytes != (ulong)volume.Size)
        {
            return (Refuse(RefuseReason.SizeMismatch, $"volume {volume.Name}: size mismatch: sender has {h.SizeBytes} bytes, this node {volume.Size}", volume), volume, "");
        }

        if (h.MaxBatchBytes == 0 || h.MaxBatchBytes > ReplicationSettings.MaxBatchBytes)
        {
            return (Refuse(RefuseReason.Limits, $"max_batch_bytes {h.MaxBatchBytes} is outside 1..{ReplicationSettings.MaxBatchBytes}", volume), volume, "");
        }

        if (h.FirstSeq == 0 || h.VolumeUuid.Length != 16 || h.NodeId.Length != 16)
        {
            return (Refuse(RefuseReason.Limits, "malformed handshake (first_seq 0, or a uuid that is not 16 bytes)", volume), volume, "");
        }

        if (volume.Disk == DiskState.Diskless)
        {
            return (Refuse(RefuseReason.DiskFailed, $"volume {volume.Name}: the local disk is diskless", volume), volume, "");
        }

        var mine = volume.Target.DescribeForReceiver();
        var senderUuid = new Guid(h.VolumeUuid.Span, bigEndian: true);
        if (!mine.Generations.Fresh && senderUuid != mine.VolumeUuid)
        {
            return (Refuse(RefuseReason.Unrelated, $"volume {volume.Name}: volume uuid {senderUuid} is not this node's {mine.VolumeUuid}: different volumes", volume), volume, "");
        }

        var sender = new GenerationInfo(h.CurrentGeneration, h.BitmapGeneration, [.. h.HistoryGenerations], h.Fresh, h.NeedsFullSync);
        var (decision, why) = GenerationRules.Decide(sender, mine.Generations);
        if (volume.Role == CoreRole.Primary && decision is not (SyncDecision.PeerIsNewer or SyncDecision.SplitBrain))
        {
            return (Refuse(RefuseReason.PeerIsPrimary, $"volume {volume.Name}: this node is primary too; two primaries never replicate to each other ({why})", volume), volume, "");
        }

        switch (decision)
        {
            case SyncDecision.PeerIsNewer:
                return (Refuse(RefuseReason.PeerIsNewer, $"volume {volume.Name}: {why}", volume), volume, "");
            case SyncDecision.SplitBrain:
                volume.SetSplitBrain(true);
                return (Refuse(RefuseReason.SplitBrain, $"volume {volume.Name}: {why}; no data touched; to end it, run `blockrepl resolve --discard-my-data` on the node whose writes are to be discarded", volume), volume, "");
            case SyncDecision.Unrelated:
                return (Refuse(RefuseReason.Unrelated, $"volume {volume.Name}: {why}", volume), volume, "");
        }

        var plan = decision switch
        {
            SyncDecision.InSync => SyncPlan.InSync,
            SyncDecision.BitmapResync => SyncPlan.BitmapResync,
            _ => SyncPlan.FullResync,
        };

        // Ranges this node changed itself (it crashed or stepped down as primary, or discards its data): the
        // sender adds them to its bitmap so the resync overwrites them too.
        var ownRuns = plan == SyncPlan.FullResync ? [] : volume.Target.OwnDirtyRuns(MaxDirtyPairs);
        if (plan == SyncPlan.InSync && ownRuns.Count > 0)
        {
            plan = SyncPlan.BitmapResync;
            why += $"; but this node names {ownRuns.Count / 2} ranges it changed itself: bitmap resync of those";
        }

        var reply = Fill(new HandshakeReply { Accepted = true, Plan = plan, Message = why, Features = (uint)(ReceiverFeature.Checksums | ReceiverFeature.Reads) }, volume);
        reply.Fresh = mine.Generations.Fresh;
        reply.DirtyRuns.AddRange(ownRuns);
        reply.DiscardMyData = mine.Generations.DiscardMyData;
        volume.SetSplitBrain(false);
        return (reply, volume, why);
    }

    private static HandshakeReply Fill(HandshakeReply reply, Volume? volume)
    {
        if (volume is null)
        {
            return reply;
        }

        var mine = volume.Target.DescribeForReceiver();
        reply.NodeId = ByteString.CopyFrom(mine.NodeId.ToByteArray(bigEndian: true));
        reply.CurrentGeneration = mine.Generations.Current;
        reply.BitmapGeneration = mine.Generations.Bitmap;
        reply.HistoryGenerations.AddRange(mine.Generations.History);
        reply.Role = volume.Role == CoreRole.Primary ? WireRole.Primary : WireRole.Secondary;
        reply.Disk = WireStates.ToWire(volume.Disk);
        reply.NeedsFullSync = mine.Generations.NeedsFullSync;
        return reply;
    }

    /// <summary>One accepted stream: apply loop plus ack writer.</summary>
    private sealed class ReceiveStream(
        Volume volume, ReplicationSettings settings, IServerStreamWriter<ReplicationAck> responses, ulong first, int maxBatchBytes, bool coalesceAcks)
        : IDisposable
    {
        private static readonly TimeSpan AsyncAckDelay = TimeSpan.FromMilliseconds(2);
        private readonly SemaphoreSlim _ackSignal = new(0);

        // Checksum replies wait here for the ack loop (the only writer of the response stream); bounded, so a
        // sender that floods requests is slowed down by the apply loop instead of growing memory.
        private readonly System.Threading.Channels.Channel<ChecksumReply> _checksumReplies =
            System.Threading.Channels.Channel.CreateBounded<ChecksumReply>(new System.Threading.Channels.BoundedChannelOptions(ChecksumRequestLimits.MaxQueuedReplies)
            {
                SingleReader = true,
                SingleWriter = true,
            });
        private byte[]? _checksumBuffer;

        // Read replies (a diskless primary reading through this node) wait here for the ack loop, bounded alike.
        private readonly System.Threading.Channels.Channel<ReadReply> _readReplies =
            System.Threading.Channels.Channel.CreateBounded<ReadReply>(new System.Threading.Channels.BoundedChannelOptions(16)
            {
                SingleReader = true,
                SingleWriter = true,
            });
        private readonly ulong _start = first;
        private readonly ulong _earliest = first + 1;
        private ulong _expected;
        private ulong _received = first;
        private ulong _applied = first;
        private ulong _durable = first;
        private int _forceAck;

        public bool SilentTooLong { get; private set; }

        public void Dispose() => _ackSignal.Dispose();

        public async Task RunAsync(IAsyncStreamReader<ReplicationFrame> requests, CancellationTokenSource streamCancel, CancellationToken token)
        {
            // The ack loop stops waiting when this stream's receive loop ends, but its writes are cancelled only
            // with the stream itself: Grpc.AspNetCore aborts the whole HTTP/2 stream (RST_STREAM CANCEL) when a
            // write is cancelled, which would hide the status a protocol error ends the call with.
            using var ackCancel = CancellationTokenSource.CreateLinkedTokenSource(token);
            var acks = Task.Run(() => AckLoopAsync(ackCancel.Token, token), CancellationToken.None);
            var buffer = ArrayPool<byte>.Shared.Rent(maxBatchBytes);
            try
            {
                using var silence = new Timer(_ =>
                {
                    SilentTooLong = true;
                    try
                    {
                        streamCancel.Cancel();
                    }
                    catch (ObjectDisposedException)
                    {
                        // the stream ended meanwhile
                    }
                }, null, settings.PeerTimeout, Timeout.InfiniteTimeSpan);
                while (await requests.MoveNext(token).ConfigureAwait(false))
                {
                    // The timer counts only time spent waiting for the sender: a slow local fdatasync while
                    // applying is not a dead peer.
                    silence.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                    var frame = requests.Current;
                    switch (frame.BodyCase)
                    {
                        case ReplicationFrame.BodyOneofCase.Batch:
                            try
                            {
                                NoteSenderAhead(frame.Batch.SenderAhead);
                                await ApplyBatchAsync(frame.Batch, buffer).ConfigureAwait(false);
                            }
                            finally
                            {
                                ReplicationWire.ReturnRecords(frame.Batch); // applied (or refused): nothing refers to it now
                            }
                            break;
                        case ReplicationFrame.BodyOneofCase.Marker:
                            await ApplyMarkerAsync(frame.Marker).ConfigureAwait(false);
                            break;
                        case ReplicationFrame.BodyOneofCase.ChecksumRequest:
                            await AnswerChecksumRequestAsync(frame.ChecksumRequest, token).ConfigureAwait(false);
                            break;
                        case ReplicationFrame.BodyOneofCase.ReadRequest:
                            await AnswerReadRequestAsync(frame.ReadRequest, token).ConfigureAwait(false);
                            break;
                        case ReplicationFrame.BodyOneofCase.Ping:
                            NoteSenderAhead(frame.Ping.SenderAhead);
                            Volatile.Write(ref _forceAck, 1);
                            _ackSignal.Release();
                            break;
                        default:
                            throw new ReplicationProtocolException(StatusCode.InvalidArgument, $"unexpected {frame.BodyCase} frame after the handshake");
                    }

                    silence.Change(settings.PeerTimeout, Timeout.InfiniteTimeSpan);
                }
            }
            finally
            {
                await ackCancel.CancelAsync().ConfigureAwait(false);
                try
                {
                    await acks.ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is OperationCanceledException or RpcException or IOException or InvalidOperationException)
                {
                }

                ArrayPool<byte>.Shared.Return(buffer);
                if (_checksumBuffer is { } checksumBuffer)
                {
                    ArrayPool<byte>.Shared.Return(checksumBuffer);
                }
            }
        }

        /// <summary>connected &lt;-&gt; behind, as the sender reports its link ahead or not (a resync overrides both).</summary>
        private void NoteSenderAhead(bool ahead)
        {
            var state = volume.Connection;
            if (ahead && state == ConnectionState.Connected)
            {
                volume.Target.SetConnection(ConnectionState.Behind);
            }
            else if (!ahead && state == ConnectionState.Behind)
            {
                volume.Target.SetConnection(ConnectionState.Connected);
            }
        }

        /// <summary>
        /// Hashes the requested chunks now: every record of every earlier batch is applied, no later one is (this
        /// runs in the apply loop), which is what makes a verify exact. The reply goes out with the next ack.
        /// </summary>
        private async Task AnswerChecksumRequestAsync(ChecksumRequest request, CancellationToken token)
        {
            if (ChecksumRequestLimits.Check(request, volume.Size) is { } violation)
            {
                throw new ReplicationProtocolException(StatusCode.InvalidArgument, $"checksum request {request.Id}: {violation}");
            }

            _checksumBuffer ??= ArrayPool<byte>.Shared.Rent(ChecksumRequestLimits.MaxLength);
            var hashes = volume.HashRangeForPeer((long)request.Offset, (int)request.Length, (int)request.ChunkBytes, _checksumBuffer);
            await _checksumReplies.Writer.WriteAsync(new ChecksumReply { Id = request.Id, Sha256 = UnsafeByteOperations.UnsafeWrap(hashes) }, token)
                .ConfigureAwait(false);
            _ackSignal.Release();
        }

        /// <summary>
        /// Reads the requested range now, in order with the batches (every earlier record is applied), for a
        /// diskless primary. A local read error is answered, not thrown: the primary fails that one read.
        /// </summary>
        private async Task AnswerReadRequestAsync(ReadRequest request, CancellationToken token)
        {
            if (request.Length == 0 || request.Length > LocksAndLimits.MaxPeerRead || request.Offset > (ulong)volume.Size || request.Length > (ulong)volume.Size - request.Offset)
            {
                throw new ReplicationProtocolException(StatusCode.InvalidArgument,
                    $"read request {request.Id}: {request.Offset}+{request.Length} is outside the {volume.Size}-byte volume or over 1 MiB");
            }

            var data = new byte[request.Length];
            var reply = new ReadReply { Id = request.Id };
            try
            {
                volume.Read((long)request.Offset, data);
                reply.Data = UnsafeByteOperations.UnsafeWrap(data);
            }
            catch (BlockImageException ex)
            {
                reply.Error = ex.Message;
            }

            await _readReplies.Writer.WriteAsync(reply, token).ConfigureAwait(false);
            _ackSignal.Release();
        }

        private async Task ApplyBatchAsync(Batch batch, byte[] buffer)
        {
            var (last, needsDurable) = ApplyBatch(batch, buffer);
            Volatile.Write(ref _applied, last);
            if (needsDurable)
            {
                await volume.Target.FlushImageAsync().ConfigureAwait(false);
                Volatile.Write(ref _durable, last);
            }

            _ackSignal.Release();
        }

        /// <summary>Checks the whole batch, then applies its records in order. Returns the last seq and whether a flush is due.</summary>
        private (ulong Last, bool NeedsDurable) ApplyBatch(Batch batch, byte[] buffer)
        {
            if (_expected == 0 && batch.FirstSeq >= _earliest)
            {
                // The first batch may start later than the handshake announced: records assigned while the
                // handshake was in flight went to the sender's bitmap and come back as resync records.
                _expected = batch.FirstSeq;
            }

            if (batch.FirstSeq != _expected)
            {
                throw new ReplicationProtocolException(StatusCode.FailedPrecondition,
                    _expected == 0
                        ? $"sequence gap: the first batch starts at seq {batch.FirstSeq}, before the announced first seq {_earliest}"
                        : $"sequence gap: expected batch at seq {_expected}, got seq {batch.FirstSeq}");
            }

            if (batch.RecordCount == 0 || batch.UncompressedLength == 0 || batch.UncompressedLength > (uint)maxBatchBytes)
            {
                throw new ReplicationProtocolException(StatusCode.InvalidArgument,
                    $"batch at seq {batch.FirstSeq}: {batch.RecordCount} records, {batch.UncompressedLength} bytes is outside the agreed bounds (1..{maxBatchBytes})");
            }

            ReadOnlySpan<byte> packed;
            if (batch.Stored)
            {
                packed = batch.CompressedRecords.Span;
                if (packed.Length != (int)batch.UncompressedLength)
                {
                    throw new ReplicationProtocolException(StatusCode.DataLoss,
                        $"batch at seq {batch.FirstSeq}: stored records are {packed.Length} bytes, not {batch.UncompressedLength}");
                }
            }
            else
            {
                var target = buffer.AsSpan(0, (int)batch.UncompressedLength);
                if (!Lz4Codec.TryDecompress(batch.CompressedRecords.Span, target, out var written) || written != target.Length)
                {
                    throw new ReplicationProtocolException(StatusCode.DataLoss,
                        $"batch at seq {batch.FirstSeq}: LZ4 block does not decompress to {batch.UncompressedLength} bytes");
                }

                packed = target;
            }

            var last = batch.FirstSeq + batch.RecordCount - 1;
            var needsDurable = false;
            try
            {
                // The reader checks CRC, count and seqs of the whole batch before it yields a record.
                var reader = new JournalBatchReader(packed, batch.FirstSeq, batch.RecordCount, batch.Crc32C);
                Volatile.Write(ref _received, last);
                while (reader.TryReadNext(out var header, out var payload))
                {
                    volume.Target.ApplyRecord(header, payload);
                    needsDurable |= header.IsFua || header.Kind == JournalRecordKind.Flush;
                }
            }
            catch (JournalFormatException ex)
            {
                throw new ReplicationProtocolException(StatusCode.DataLoss, $"batch at seq {batch.FirstSeq}: {ex.Message}");
            }

            _expected = last + 1;
            volume.Target.NoteSenderProgress(batch.SenderLastSeq, batch.SenderUnsentBytes, last);
            return (last, needsDurable);
        }

        private async Task ApplyMarkerAsync(ResyncMarker marker)
        {
            if (marker.Begin)
            {
                volume.Target.BeginSyncTarget();
            }
            else
            {
                await volume.Target.EndSyncTargetAsync(marker.Generation, marker.Full).ConfigureAwait(false);
                Volatile.Write(ref _durable, Volatile.Read(ref _applied));
                _ackSignal.Release();
            }
        }

        private async Task AckLoopAsync(CancellationToken token, CancellationToken writeToken)
        {
            ulong sentReceived = _start, sentApplied = _start, sentDurable = _start;
            var keepalive = settings.PeerTimeout / 4;
            var wait = keepalive < settings.DurableInterval ? keepalive : settings.DurableInterval;
            var lastSent = Environment.TickCount64;
            var lastFlushAt = Environment.TickCount64;
            Task? flushing = null;
            while (true)
            {
                var signalled = await _ackSignal.WaitAsync(wait, token).ConfigureAwait(false);
                if (signalled && coalesceAcks && Volatile.Read(ref _forceAck) == 0)
                {
                    // Async: nobody waits on these acks; one per couple of milliseconds covers many batches.
                    await Task.Delay(AsyncAckDelay, token).ConfigureAwait(false);
                    while (_ackSignal.CurrentCount > 0 && _ackSignal.Wait(0, CancellationToken.None))
                    {
                    }
                }

                var applied = Volatile.Read(ref _applied);
                if (applied > Volatile.Read(ref _durable) && flushing is null or { IsCompleted: true }
                    && Environment.TickCount64 - lastFlushAt >= (long)settings.DurableInterval.TotalMilliseconds)
                {
                    // Periodic durability, off this loop (an fdatasync may take long): lets the sender clear what
                    // it holds for us even without flushes. Timed from the last one, so pings cannot starve it.
                    lastFlushAt = Environment.TickCount64;
                    flushing = FlushThenMarkDurableAsync(applied);
                }

                var received = Volatile.Read(ref _received);
                applied = Volatile.Read(ref _applied);
                var durable = Volatile.Read(ref _durable);
                // Replies (reads for a diskless primary, then hashes) ride on acks carrying the current seqs.
                while (true)
                {
                    var ack = new ReplicationAck { ReceivedSeq = Math.Max(received, applied), AppliedSeq = applied, DurableSeq = Math.Min(durable, applied) };
                    if (_readReplies.Reader.TryRead(out var read))
                    {
                        ack.ReadReply = read;
                    }
                    else if (_checksumReplies.Reader.TryRead(out var checksum))
                    {
                        ack.ChecksumReply = checksum;
                    }
                    else
                    {
                        break;
                    }

                    await responses.WriteAsync(ack, writeToken).ConfigureAwait(false);
                    (sentReceived, sentApplied, sentDurable) = (received, applied, durable);
                    lastSent = Environment.TickCount64;
                }

                var force = Interlocked.Exchange(ref _forceAck, 0) != 0
                    || Environment.TickCount64 - lastSent >= (long)keepalive.TotalMilliseconds; // keepalive while busy
                if (force || received != sentReceived || applied != sentApplied || durable != sentDurable)
                {
                    // Values read in this order never claim applied > received or durable > applied.
                    await responses.WriteAsync(new ReplicationAck
                    {
                        ReceivedSeq = Math.Max(received, applied),
                        AppliedSeq = applied,
                        DurableSeq = Math.Min(durable, applied),
                    }, writeToken).ConfigureAwait(false);
                    (sentReceived, sentApplied, sentDurable) = (received, applied, durable);
                    lastSent = Environment.TickCount64;
                }
            }
        }

        private async Task FlushThenMarkDurableAsync(ulong applied)
        {
            try
            {
                await volume.Target.FlushImageAsync().ConfigureAwait(false);
                InterlockedMax(ref _durable, applied);
                _ackSignal.Release();
            }
            catch (Exception ex) when (ex is BlockImageException or IOException or ObjectDisposedException)
            {
                // The apply path meets the same failure and ends the stream; durable simply does not move.
            }
        }

        private static void InterlockedMax(ref ulong target, ulong value)
        {
            var current = Volatile.Read(ref target);
            while (current < value)
            {
                var seen = Interlocked.CompareExchange(ref target, value, current);
                if (seen == current)
                {
                    return;
                }

                current = seen;
            }
        }
    }
}

/// <summary>A peer broke the replication protocol: the stream ends with <see cref="Code"/>.</summary>
internal sealed class ReplicationProtocolException(StatusCode code, string message) : Exception(message)
{
    public StatusCode Code { get; } = code;
}
