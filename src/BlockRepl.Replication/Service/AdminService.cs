using System.Diagnostics;
using BlockRepl.Core;
using BlockRepl.Replication.V1;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Replication.Service;

/// <summary>What the admin service needs from the daemon around a volume.</summary>
/// <param name="Volume">The volume.</param>
/// <param name="Peer">The configured peer address, or null when standalone.</param>
/// <param name="CloseClients">Disconnects the volume's front-end clients (after a role change they reconnect and see the new export flags).</param>
internal sealed record AdminVolume(Volume Volume, string? Peer, Func<int> CloseClients);

/// <summary>
/// The Admin service (status, promote, demote, verify, resolve, attach) that the `blockrepl` verbs call. Served
/// only on the admin address (<see cref="ListenerGuard"/> refuses it on the replication port).
/// </summary>
/// <param name="stopping">Cancelled when the daemon begins to stop: open status watches end then, so the host's
/// graceful stop never waits on them.</param>
internal sealed class AdminService(
    IReadOnlyList<AdminVolume> volumes, ReplicaService replica, DateTimeOffset startedAt, ILogger logger, CancellationToken stopping)
    : Admin.AdminBase
{

    /// <summary>How long a demotion waits for the peer by default (<c>demote --timeout</c> overrides it).</summary>
    public static readonly TimeSpan DemoteDrainTimeout = TimeSpan.FromSeconds(30);

    public override Task<StatusReply> Status(StatusRequest request, ServerCallContext context) =>
        Task.FromResult(Reply(Select(request.Volume)));

    /// <summary>
    /// The status at once, then at each change of a watched volume (its <see cref="Volume.Changes"/>), no sooner than
    /// the least interval after the previous reply and no later than the most interval. Waits on the volumes'
    /// signals and one timeout; nothing polls.
    /// </summary>
    public override async Task WatchStatus(WatchStatusRequest request, IServerStreamWriter<StatusReply> responseStream, ServerCallContext context)
    {
        var watched = Select(request.Volume).ToArray();
        var (least, most) = WatchIntervals(request.MinIntervalMs, request.MaxIntervalMs);
        using var ended = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, stopping);
        var seen = new long[watched.Length];
        var changes = new Task[watched.Length];
        try
        {
            while (true)
            {
                // Versions first, then the state: a change while the reply is built shows in this reply or wakes
                // the wait below at once.
                for (var i = 0; i < watched.Length; i++)
                {
                    seen[i] = watched[i].Volume.Changes.Version;
                }

                await responseStream.WriteAsync(Reply(watched), ended.Token).ConfigureAwait(false);
                var sentAt = Stopwatch.GetTimestamp();
                for (var i = 0; i < watched.Length; i++)
                {
                    changes[i] = watched[i].Volume.Changes.WaitAsync(seen[i]);
                }

                var changed = changes.Length == 1 ? changes[0] : Task.WhenAny(changes);
                await changed.WaitAsync(most, ended.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                ended.Token.ThrowIfCancellationRequested();

                // A change sooner than the least interval: the changes until then go out together in one reply.
                var rest = least - Stopwatch.GetElapsedTime(sentAt);
                if (rest > TimeSpan.Zero)
                {
                    await Task.Delay(rest, ended.Token).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex) when (ended.IsCancellationRequested && ex is OperationCanceledException or InvalidOperationException or IOException)
        {
            // The client went away (nothing more to send), or the daemon is stopping: say so in the status.
            if (!context.CancellationToken.IsCancellationRequested)
            {
                context.Status = new Status(StatusCode.Unavailable, "the daemon is stopping");
            }
        }
    }

    /// <summary>The least and most time between two watch replies, from what the client asked (0: the default).</summary>
    internal static (TimeSpan Least, TimeSpan Most) WatchIntervals(uint minMs, uint maxMs)
    {
        var least = minMs == 0 ? LocksAndLimits.WatchMinInterval : TimeSpan.FromMilliseconds(minMs);
        least = Clamp(least, LocksAndLimits.WatchIntervalFloor, LocksAndLimits.WatchIntervalCeiling);
        var most = maxMs == 0 ? LocksAndLimits.WatchMaxInterval : TimeSpan.FromMilliseconds(maxMs);
        most = Clamp(most, least, LocksAndLimits.WatchIntervalCeiling);
        return (least, most);

        static TimeSpan Clamp(TimeSpan value, TimeSpan low, TimeSpan high) => value < low ? low : value > high ? high : value;
    }

    private StatusReply Reply(IEnumerable<AdminVolume> selected)
    {
        var reply = new StatusReply
        {
            DaemonVersion = typeof(AdminService).Assembly.GetName().Version?.ToString() ?? "0",
            Pid = Environment.ProcessId,
            StartedUnixMs = startedAt.ToUnixTimeMilliseconds(),
            Runtime = new RuntimeStats
            {
                Gen0Collections = (ulong)GC.CollectionCount(0),
                Gen1Collections = (ulong)GC.CollectionCount(1),
                Gen2Collections = (ulong)GC.CollectionCount(2),
                TotalAllocatedBytes = (ulong)GC.GetTotalAllocatedBytes(),
                GcPauseTotalUs = (ulong)(GC.GetTotalPauseDuration().Ticks / TimeSpan.TicksPerMicrosecond),
            },
        };
        foreach (var v in selected)
        {
            reply.Volumes.Add(Describe(v));
        }

        return reply;
    }

    public override Task<PromoteReply> Promote(PromoteRequest request, ServerCallContext context)
    {
        var v = Single(request.Volume);
        var volume = v.Volume;
        var wasPrimary = volume.Role == Core.VolumeRole.Primary;
        if (request.Force && replica.HasStream(volume.Name))
        {
            replica.CancelAll(); // a forced promotion ends the stream from the old primary first
        }

        var result = volume.Promote(request.Force);
        if (!result.Done)
        {
            ReplicationLog.Info(logger, volume.Name, $"promote refused: {result.Reason}");
            return Task.FromResult(new PromoteReply { Done = false, Reason = result.Reason });
        }

        if (!wasPrimary)
        {
            var closed = v.CloseClients();
            var missing = result.MissingRecords > 0 ? $"; it had not received {result.MissingRecords} records ({result.MissingBytes} bytes unsent) the old primary announced" : "";
            ReplicationLog.Info(logger, volume.Name,
                $"promoted to primary{(request.Force ? " (forced)" : "")}, new generation {Core.Replication.GenerationRules.Hex(result.NewGeneration)}, {closed} read-only clients closed{missing}");
        }

        return Task.FromResult(new PromoteReply
        {
            Done = true,
            MissingRecords = result.MissingRecords,
            MissingBytes = result.MissingBytes,
            NewGeneration = result.NewGeneration,
        });
    }

    public override async Task<DemoteReply> Demote(DemoteRequest request, ServerCallContext context)
    {
        var v = Single(request.Volume);
        var wasPrimary = v.Volume.Role == Core.VolumeRole.Primary;
        var timeout = request.TimeoutMs == 0 ? DemoteDrainTimeout : TimeSpan.FromMilliseconds(Math.Min(request.TimeoutMs, 600_000));
        var result = await v.Volume.DemoteAsync(timeout, context.CancellationToken).ConfigureAwait(false);
        var closed = wasPrimary ? v.CloseClients() : 0;
        if (wasPrimary)
        {
            ReplicationLog.Info(logger, v.Volume.Name, $"demoted to secondary; {closed} clients closed{(result.Reason.Length > 0 ? "; " + result.Reason : "")}");
        }

        return new DemoteReply { Done = result.Done, Reason = result.Reason, ClosedClients = (uint)closed, ShippedRecords = result.ShippedRecords };
    }

    public override async Task<VerifyReply> Verify(VerifyRequest request, ServerCallContext context)
    {
        var v = Single(request.Volume);
        var chunk = request.ChunkBytes == 0 ? Volume.DefaultVerifyChunk : (int)Math.Min(request.ChunkBytes, int.MaxValue);
        var result = await v.Volume.VerifyAsync(chunk, request.Repair, message => ReplicationLog.Info(logger, v.Volume.Name, message), context.CancellationToken)
            .ConfigureAwait(false);
        if (!result.Done && result.BytesCompared == 0)
        {
            ReplicationLog.Info(logger, v.Volume.Name, $"verify refused: {result.Reason}");
        }

        return new VerifyReply { Done = result.Done, Reason = result.Reason, Report = ToWire(result) };
    }

    internal static VerifyReport ToWire(VerifyResult r)
    {
        var report = new VerifyReport
        {
            StartedUnixMs = r.StartedAt.ToUnixTimeMilliseconds(),
            FinishedUnixMs = r.FinishedAt.ToUnixTimeMilliseconds(),
            ChunkBytes = (uint)r.ChunkBytes,
            BytesCompared = (ulong)r.BytesCompared,
            ChunksCompared = (ulong)r.ChunksCompared,
            DirtyChunksSkipped = (ulong)r.DirtyChunksSkipped,
            Repair = r.Repair,
            Error = r.Reason,
        };
        report.Differing.AddRange(r.Differing.Select(d => new ByteRange { Offset = (ulong)d.Offset, Length = (ulong)d.Length }));
        if (r.Repair)
        {
            report.Remaining.AddRange(r.Remaining.Select(d => new ByteRange { Offset = (ulong)d.Offset, Length = (ulong)d.Length }));
        }

        return report;
    }

    public override async Task<AttachReply> Attach(AttachRequest request, ServerCallContext context)
    {
        var volume = Single(request.Volume).Volume;
        var result = await volume.AttachDiskAsync(context.CancellationToken).ConfigureAwait(false);
        ReplicationLog.Info(logger, volume.Name, result.Done
            ? $"local disk attached: {result.MissingBytes} bytes pulled from the peer; disk {volume.Disk.Name()}"
            : $"attach refused: {result.Reason}");
        return new AttachReply { Done = result.Done, Reason = result.Reason, PulledBytes = result.MissingBytes };
    }

    public override Task<ResolveReply> Resolve(ResolveRequest request, ServerCallContext context)
    {
        var v = Single(request.Volume);
        if (!request.DiscardMyData)
        {
            return Task.FromResult(new ResolveReply { Done = false, Reason = "resolve needs --discard-my-data: run it on the node whose changes are to be discarded" });
        }

        var volume = v.Volume;
        var wasPrimary = volume.Role == Core.VolumeRole.Primary;
        var result = volume.ResolveDiscardMyData();
        var closed = wasPrimary ? v.CloseClients() : 0;
        ReplicationLog.Info(logger, volume.Name,
            $"resolve --discard-my-data: now secondary, {result.MissingBytes} bytes of own changes to be overwritten by the peer ({result.Reason} resync at the next connection); {closed} clients closed");
        return Task.FromResult(new ResolveReply { Done = true, Plan = result.Reason, OwnDirtyBytes = result.MissingBytes });
    }

    private IEnumerable<AdminVolume> Select(string name) =>
        string.IsNullOrEmpty(name) ? volumes : [Single(name)];

    private AdminVolume Single(string name)
    {
        if (string.IsNullOrEmpty(name))
        {
            return volumes.Count == 1
                ? volumes[0]
                : throw new RpcException(new Status(StatusCode.InvalidArgument, $"this daemon serves {volumes.Count} volumes: name one with --volume"));
        }

        return volumes.FirstOrDefault(v => v.Volume.Name == name)
            ?? throw new RpcException(new Status(StatusCode.NotFound, $"no volume named '{name}'"));
    }

    private static VolumeStatus Describe(AdminVolume v)
    {
        var volume = v.Volume;
        var g = volume.Generations;
        var status = new VolumeStatus
        {
            Name = volume.Name,
            Uuid = volume.VolumeUuid.ToString(),
            SizeBytes = (ulong)volume.Size,
            Role = WireStates.ToWire(volume.Role),
            Disk = WireStates.ToWire(volume.Disk),
            Connection = WireStates.ToWire(volume.Connection),
            Mode = WireStates.ToWire(volume.Mode),
            Peer = v.Peer ?? "",
            Image = volume.ImagePath,
            LastError = volume.LastError ?? "",
            LastErrorUnixMs = volume.LastErrorUnixMs,
            CurrentGeneration = g.Current,
            BitmapGeneration = g.Bitmap,
            Counters = new V1.VolumeCounters
            {
                Reads = (ulong)volume.Counters.Reads,
                Writes = (ulong)volume.Counters.Writes,
                Trims = (ulong)volume.Counters.Trims,
                Zeroes = (ulong)volume.Counters.Zeroes,
                Flushes = (ulong)volume.Counters.Flushes,
                BytesRead = (ulong)volume.Counters.BytesRead,
                BytesWritten = (ulong)volume.Counters.BytesWritten,
                Errors = (ulong)volume.Counters.Errors,
            },
        };
        status.HistoryGenerations.AddRange(g.History);
        status.DiscardMyData = volume.DiscardMyData;
        status.LocalMissingBytes = (ulong)volume.LocalMissingBytes;
        foreach (var (state, count) in volume.ConnectionHistory.Entries())
        {
            status.ConnectionEntries[state] = (ulong)count;
        }

        foreach (var c in volume.Clients)
        {
            status.Clients.Add(new ClientInfo { FrontEnd = c.FrontEnd, Remote = c.Remote, SinceUnixMs = c.Since.ToUnixTimeMilliseconds() });
        }

        if (volume.LastVerify is { } verify)
        {
            status.LastVerify = ToWire(verify);
        }

        var (missingRecords, missingBytes) = volume.KnownMissing;
        status.KnownMissingRecords = missingRecords;
        status.KnownMissingBytes = missingBytes;
        // A secondary's bitmap names the blocks it changed itself as primary (after a demotion the peer had not
        // acknowledged in full, a step-down or resolve --discard-my-data): the next resync overwrites them.
        var snapshot = volume.ReplicationSnapshot;
        status.DirtyBytes = (ulong)(snapshot?.DirtyBytes ?? 0);
        if (snapshot is { } r && volume.Role == Core.VolumeRole.Primary)
        {
            status.Lag = new ReplicationLag
            {
                LastSeq = r.LastSeq,
                ReceivedSeq = r.ReceivedSeq,
                AppliedSeq = r.AppliedSeq,
                DurableSeq = r.DurableSeq,
                QueuedRecords = (ulong)r.QueuedRecords,
                QueuedBytes = (ulong)r.QueuedBytes,
                OldestUnackedUs = (ulong)r.OldestUnackedMicroseconds,
                AheadCount = (ulong)r.AheadCount,
                Connects = (ulong)r.Connects,
                Disconnects = (ulong)r.Disconnects,
            };
            status.Wire = new WireStats
            {
                PayloadBytes = (ulong)r.PayloadBytes,
                WireBytes = (ulong)r.WireBytes,
                Batches = (ulong)r.Batches,
                Records = (ulong)r.Records,
            };
            if (volume.Link is { } link)
            {
                var (requests, replyBytes, equalBytes) = link.ChecksumCounters;
                status.Wire.ChecksumRequests = (ulong)requests;
                status.Wire.ChecksumReplyBytes = (ulong)replyBytes;
                status.Wire.ChecksumEqualBytes = (ulong)equalBytes;
            }

            if (r.LastResyncSeconds > 0 || r.LastResyncBytes > 0)
            {
                status.LastResync = new LastResync { Bytes = (ulong)r.LastResyncBytes, Seconds = r.LastResyncSeconds, Full = r.LastResyncFull, Reason = r.LastResyncReason };
            }

            if (volume.ActivityLogCapacity > 0)
            {
                status.ActivityLog = new ActivityLogStatus
                {
                    HotExtents = (uint)r.ActivityLogHot,
                    Capacity = (uint)volume.ActivityLogCapacity,
                    Transactions = (ulong)r.ActivityLogTransactions,
                    Evictions = (ulong)r.ActivityLogEvictions,
                };
            }

            if (r.ResyncActive)
            {
                var rate = r.ResyncElapsedSeconds > 0 ? r.ResyncDoneBytes / r.ResyncElapsedSeconds : 0;
                var left = Math.Max(0, r.ResyncTotalBytes - r.ResyncDoneBytes);
                status.Resync = new ResyncProgress
                {
                    TotalBytes = (ulong)r.ResyncTotalBytes,
                    DoneBytes = (ulong)r.ResyncDoneBytes,
                    BytesPerSecond = (ulong)rate,
                    EtaSeconds = rate > 0 ? (ulong)Math.Ceiling(left / rate) : 0,
                    Full = r.ResyncFull,
                    Reason = r.ResyncReason,
                };
            }
        }

        return status;
    }
}
