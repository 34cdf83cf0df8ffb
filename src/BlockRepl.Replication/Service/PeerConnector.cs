using System.Diagnostics;
using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;
using BlockRepl.Replication.Lz4;
using BlockRepl.Replication.V1;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using CoreRole = BlockRepl.Core.VolumeRole;
using WireMode = BlockRepl.Replication.V1.ReplicationMode;
using WireRole = BlockRepl.Replication.V1.VolumeRole;

namespace BlockRepl.Replication.Service;

/// <summary>
/// The sending side: while the volume is primary, keeps one Replicate stream to the peer open — handshake,
/// batches (group commit, LZ4, CRC32C), keepalives, acks, resync — and reconnects with backoff when it ends.
/// </summary>
internal sealed class PeerConnector : IAsyncDisposable
{
    /// <summary>A batch that LZ4 shrinks by less than 10 % counts as incompressible.</summary>
    private const double IncompressibleRatio = 0.9;

    /// <summary>Batches sent stored (no LZ4) after an incompressible one, before compression is tried again.</summary>
    private const int SkipAfterIncompressible = 4;

    /// <summary>How long a demoted node keeps its stream open for the peer to acknowledge what is in flight.</summary>
    private static readonly TimeSpan DemoteDrainLimit = TimeSpan.FromSeconds(35);

    private readonly Volume _volume;
    private readonly Uri _peer;
    private readonly ReplicationSettings _settings;
    private readonly ILogger _log;
    private readonly Action<string> _onStepDown;
    private readonly CancellationTokenSource _stop = new();
    private readonly GrpcChannel _channel;
    private readonly CallInvoker _invoker;
    private Task? _loop;

    /// <summary>The volume's sending side (a connector exists only for a volume with a peer attached).</summary>
    private ReplicationSource Source => _volume.Source ?? throw new InvalidOperationException($"volume {_volume.Name} has no peer configured");

    public PeerConnector(Volume volume, Uri peer, ReplicationSettings settings, ILogger log, Action<string> onStepDown)
    {
        _volume = volume;
        _peer = peer;
        _settings = settings;
        _log = log;
        _onStepDown = onStepDown;
        _channel = GrpcChannel.ForAddress(peer, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = ReplicationSettings.MaxMessageBytes,
            MaxSendMessageSize = ReplicationSettings.MaxMessageBytes,
            HttpHandler = new SocketsHttpHandler
            {
                ConnectTimeout = settings.PeerTimeout,
                EnableMultipleHttp2Connections = true,
                KeepAlivePingDelay = settings.PeerTimeout,
                KeepAlivePingTimeout = settings.PeerTimeout,
                KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
                PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
                UseProxy = false,
                AllowAutoRedirect = false,
                AutomaticDecompression = System.Net.DecompressionMethods.None,
            },
        });
        _invoker = _channel.CreateCallInvoker();
    }

    public string Peer => _peer.ToString();

    public void Start() => _loop = Task.Run(() => RunAsync(_stop.Token));

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            try
            {
                await _loop.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }

        _channel.Dispose();
        _stop.Dispose();
    }

    private async Task RunAsync(CancellationToken stop)
    {
        var backoff = _settings.MinBackoff;
        var announced = false;
        while (!stop.IsCancellationRequested)
        {
            if (_volume.Role != CoreRole.Primary)
            {
                announced = false;
                await _volume.WaitForRoleAsync(CoreRole.Primary, stop).ConfigureAwait(false);
                continue;
            }

            if (!announced)
            {
                ReplicationLog.Connecting(_log, _volume.Name, Peer);
                announced = true;
            }

            var wait = backoff;
            try
            {
                var outcome = await RunStreamAsync(stop).ConfigureAwait(false);
                backoff = _settings.MinBackoff;
                wait = outcome;
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                var reason = Describe(ex);
                if (_volume.Link is { } link && link.Accepted)
                {
                    ReplicationLog.PeerLost(_log, _volume.Name, Peer, reason);
                    backoff = _settings.MinBackoff;
                    wait = backoff;
                }

                _volume.ReportError($"peer {Peer}: {reason}");
                backoff = TimeSpan.FromTicks(Math.Min(_settings.MaxBackoff.Ticks, backoff.Ticks * 2));
            }
            finally
            {
                _volume.Source?.StreamClosed();
            }

            try
            {
                await Task.Delay(wait, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>One stream from handshake to its end. Returns how long to wait before the next attempt.</summary>
    private async Task<TimeSpan> RunStreamAsync(CancellationToken stop)
    {
        using var streamCancel = CancellationTokenSource.CreateLinkedTokenSource(stop);
        var token = streamCancel.Token;
        using var call = _invoker.AsyncDuplexStreamingCall(ReplicationWire.Replicate, null, new CallOptions(cancellationToken: token));
        var source = Source;
        var opening = source.DescribeForHandshake();
        var link = source.Link;
        var g = opening.Generations;
        var handshake = new Handshake
        {
            ProtocolVersion = ReplicationSettings.ProtocolVersion,
            VolumeUuid = ByteString.CopyFrom(opening.VolumeUuid.ToByteArray(bigEndian: true)),
            VolumeName = _volume.Name,
            SizeBytes = (ulong)_volume.Size,
            NodeId = ByteString.CopyFrom(opening.NodeId.ToByteArray(bigEndian: true)),
            CurrentGeneration = g.Current,
            BitmapGeneration = g.Bitmap,
            Fresh = g.Fresh,
            NeedsFullSync = g.NeedsFullSync,
            Mode = link.Mode == Core.Replication.ReplicationMode.Sync ? WireMode.Sync : WireMode.Async,
            Role = WireRole.Primary,
            FirstSeq = opening.FirstSeq,
            MaxBatchBytes = ReplicationSettings.MaxBatchBytes,
        };
        handshake.HistoryGenerations.AddRange(g.History);
        await call.RequestStream.WriteAsync(new ReplicationFrame { Handshake = handshake }, token).ConfigureAwait(false);

        streamCancel.CancelAfter(_settings.PeerTimeout * 2);
        if (!await call.ResponseStream.MoveNext(token).ConfigureAwait(false))
        {
            throw new RpcException(call.GetStatus());
        }

        streamCancel.CancelAfter(Timeout.InfiniteTimeSpan);
        var reply = call.ResponseStream.Current.HandshakeReply
            ?? throw new ReplicationProtocolException(StatusCode.Internal, "the peer's first ack carries no handshake reply");
        if (!reply.Accepted)
        {
            return HandleRefusal(reply);
        }

        var full = reply.Plan == SyncPlan.FullResync;
        link.PeerChecksums = (reply.Features & (uint)ReceiverFeature.Checksums) != 0;
        link.PeerServesReads = (reply.Features & (uint)ReceiverFeature.Reads) != 0;
        var needResync = source.StreamAccepted(full, reply.CurrentGeneration, targetFresh: reply.Fresh,
            peerInconsistent: reply.Disk == V1.DiskState.Inconsistent, peerDirtyRuns: reply.DirtyRuns, reason: $"{reply.Plan}: {reply.Message}");
        var decision = $"{reply.Plan}: {reply.Message}";
        ReplicationLog.Connected(_log, _volume.Name, Peer, decision);

        var silent = false;
        var tasks = new[]
        {
            Task.Run(() => SendLoopAsync(call, link, token), CancellationToken.None),
            Task.Run(() => AckLoopAsync(call, link, () => { silent = true; CancelQuietly(streamCancel); }, token), CancellationToken.None),
            Task.Run(() => ResyncLoopAsync(needResync, full, link, token), CancellationToken.None),
        };
        var first = await Task.WhenAny(tasks).ConfigureAwait(false);
        await streamCancel.CancelAsync().ConfigureAwait(false);
        source.StreamClosed();
        try
        {
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
        catch (Exception) when (silent || first.IsCompletedSuccessfully || first.IsCanceled || stop.IsCancellationRequested)
        {
            // The other loops only failed because the stream was cancelled under them (Grpc.Net.Client reports a
            // cancelled call as RpcException(Cancelled)): the outcome is judged below, from silence and the first.
        }

        if (_volume.Role != CoreRole.Primary && !stop.IsCancellationRequested)
        {
            ReplicationLog.Info(_log, _volume.Name, "replication stream closed: this node is no longer primary");
            return _settings.MinBackoff;
        }

        if (silent)
        {
            throw new TimeoutException($"no ack or keepalive for {_settings.PeerTimeout.TotalSeconds:0.#} s (dead peer)");
        }

        if (first.Exception?.InnerException is { } failure)
        {
            throw failure;
        }

        stop.ThrowIfCancellationRequested();
        throw new IOException("the peer ended the stream");
    }

    private TimeSpan HandleRefusal(HandshakeReply reply)
    {
        var why = $"{reply.RefuseReason}: {reply.Message}";
        ReplicationLog.Refused(_log, _volume.Name, Peer, why);
        _volume.ReportError($"peer {Peer} refused: {reply.Message}");
        switch (reply.RefuseReason)
        {
            case RefuseReason.PeerIsNewer:
                ReplicationLog.SteppingDown(_log, _volume.Name, reply.Message);
                _volume.StepDownForNewerPeer();
                _onStepDown(_volume.Name);
                return _settings.MinBackoff;
            case RefuseReason.SplitBrain:
                _volume.SetSplitBrain(true);
                return TimeSpan.FromSeconds(5);
            default:
                return _settings.MaxBackoff;
        }
    }

    private async Task SendLoopAsync(AsyncDuplexStreamingCall<ReplicationFrame, ReplicationAck> call, PeerLink link, CancellationToken token)
    {
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var compressed = new byte[Lz4Codec.MaxCompressedLength(ReplicationSettings.MaxBatchBytes)];
        var idle = _settings.PeerTimeout / 4;
        ulong pings = 0;
        var skipCompression = 0;
        // The two frames of the steady state are reused (WriteAsync has serialized a frame by the time it returns).
        var ping = new Ping();
        var pingFrame = new ReplicationFrame { Ping = ping };
        var batch = new Batch();
        var batchFrame = new ReplicationFrame { Batch = batch };
        while (true)
        {
            var take = await link.TakeAsync(writer, ReplicationSettings.SoftBatchBytes, idle, token).ConfigureAwait(false);
            ReplicationFrame frame;
            if (take.Idle)
            {
                ping.Id = ++pings;
                ping.SenderAhead = link.Ahead;
                frame = pingFrame;
            }
            else if (take.Read is { } read)
            {
                frame = new ReplicationFrame { ReadRequest = new ReadRequest { Id = read.Id, Offset = (ulong)read.Offset, Length = (uint)read.Length } };
            }
            else if (take.Probe is { } probe)
            {
                frame = new ReplicationFrame
                {
                    ChecksumRequest = new ChecksumRequest { Id = probe.Id, Offset = (ulong)probe.Offset, Length = (uint)probe.Length, ChunkBytes = (uint)probe.ChunkBytes },
                };
            }
            else if (take.Marker is { } marker)
            {
                frame = new ReplicationFrame
                {
                    Marker = new ResyncMarker { Begin = marker.Begin, TotalBytes = (ulong)marker.TotalBytes, Full = marker.Full, Generation = marker.Generation },
                };
                if (!marker.Begin)
                {
                    ReplicationLog.Info(_log, _volume.Name, "resync complete; the peer is in sync");
                }
            }
            else
            {
                ReadOnlyMemory<byte> records;
                var stored = skipCompression > 0;
                if (stored)
                {
                    skipCompression--;
                    records = writer.PackedMemory;
                }
                else
                {
                    var length = Lz4Codec.Compress(writer.Packed, compressed);
                    records = compressed.AsMemory(0, length);
                    if (length > writer.UncompressedLength * IncompressibleRatio)
                    {
                        // Random or already compressed data: send the next batches as they are, then try again.
                        skipCompression = SkipAfterIncompressible;
                    }
                }

                batch.FirstSeq = writer.FirstSeq;
                batch.RecordCount = (uint)writer.RecordCount;
                batch.UncompressedLength = (uint)writer.UncompressedLength;
                batch.CompressedRecords = UnsafeByteOperations.UnsafeWrap(records); // the one object a batch costs
                batch.Crc32C = writer.PackedCrc32C;
                batch.SenderLastSeq = take.LastSeq;
                batch.SenderUnsentBytes = (ulong)take.UnsentBytes;
                batch.Stored = stored;
                batch.SenderAhead = link.Ahead;
                frame = batchFrame;
            }

            // The frame is serialized before WriteAsync returns, so the buffers may be reused afterwards.
            await call.RequestStream.WriteAsync(frame, token).ConfigureAwait(false);
            if (take.Records > 0)
            {
                link.CountSent(take.Records, writer.UncompressedLength, frame.CalculateSize() + 5);
            }
        }
    }

    private async Task AckLoopAsync(AsyncDuplexStreamingCall<ReplicationFrame, ReplicationAck> call, PeerLink link, Action onSilence, CancellationToken token)
    {
        using var silence = new Timer(_ => onSilence(), null, _settings.PeerTimeout, Timeout.InfiniteTimeSpan);
        while (await call.ResponseStream.MoveNext(token).ConfigureAwait(false))
        {
            silence.Change(_settings.PeerTimeout, Timeout.InfiniteTimeSpan);
            var ack = call.ResponseStream.Current;
            if (!link.OnAck(ack.ReceivedSeq, ack.AppliedSeq, ack.DurableSeq))
            {
                throw new ReplicationProtocolException(StatusCode.Internal,
                    $"the peer acknowledged seqs it was never sent (received {ack.ReceivedSeq}, applied {ack.AppliedSeq}, durable {ack.DurableSeq})");
            }

            if (ack.ReadReply is { } read && !link.OnReadReply(read.Id, read.Data.Span, read.Error))
            {
                throw new ReplicationProtocolException(StatusCode.Internal,
                    $"the peer answered read {read.Id}, which is not outstanding, or with {read.Data.Length} bytes");
            }

            if (ack.ChecksumReply is { } checksum && !link.OnChecksumReply(checksum.Id, checksum.Sha256.Span))
            {
                throw new ReplicationProtocolException(StatusCode.Internal,
                    $"the peer answered checksum request {checksum.Id}, which is not outstanding, or with {checksum.Sha256.Length} bytes of hashes");
            }
        }

        var status = call.GetStatus();
        throw new RpcException(status.StatusCode == StatusCode.OK ? new Status(StatusCode.Unavailable, "the peer ended the stream") : status);
    }

    private async Task ResyncLoopAsync(bool needResync, bool full, PeerLink link, CancellationToken token)
    {
        var first = true;
        long? demotedAt = null;
        while (true)
        {
            if (needResync || ResyncDue(link))
            {
                // Also after a demotion: a resync that is due (or begun) must finish, or the peer stays inconsistent.
                Action<string> log = message => ReplicationLog.Info(_log, _volume.Name, message);
                if (_settings.ChecksumResync)
                {
                    // Probe first: only the chunks whose hashes differ stay dirty for the data pass below.
                    await _volume.RunChecksumPassAsync(first && full, log, token).ConfigureAwait(false);
                }

                await Source.RunResyncAsync(first && full, message => ReplicationLog.Info(_log, _volume.Name, message), token).ConfigureAwait(false);
                needResync = false;
                first = false;
                continue;
            }

            var demoted = _volume.Role != CoreRole.Primary;
            var drainLeft = Timeout.InfiniteTimeSpan;
            if (demoted)
            {
                // Demoted: keep the stream until the peer has every write durable (the demotion waits for that),
                // then end it. A write the peer never acknowledged then fails instead of completing.
                demotedAt ??= Stopwatch.GetTimestamp();
                drainLeft = DemoteDrainLimit - Stopwatch.GetElapsedTime(demotedAt.Value);
                if (link.WasDrained || drainLeft <= TimeSpan.Zero)
                {
                    return;
                }
            }

            // Nothing to do now: wait (signalled by the link and the role) until there is, or for the drain limit.
            await Source.WaitUntilAsync(
                l => ResyncDue(l) || (_volume.Role != CoreRole.Primary && (!demoted || l.WasDrained)),
                drainLeft, token).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A resync must be driven: one is begun and its End marker is not queued yet, or bits are dirty with no resync
    /// running (a repair, a failed local write, a range given back) and the link can carry one (streaming, not ahead).
    /// </summary>
    private static bool ResyncDue(PeerLink link) =>
        link.Streaming && !link.Ahead && (link.ResyncUnfinished || (link.HasDirty && !link.ResyncActive));

    private static void CancelQuietly(CancellationTokenSource source)
    {
        try
        {
            source.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // the stream ended meanwhile
        }
    }

    private static string Describe(Exception ex) => ex switch
    {
        RpcException rpc => $"{rpc.StatusCode}: {rpc.Status.Detail}",
        _ => ex.Message,
    };
}
