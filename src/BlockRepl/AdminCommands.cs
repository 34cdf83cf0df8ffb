using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using BlockRepl.Replication.Service;
using BlockRepl.Replication.V1;
using Grpc.Core;

namespace BlockRepl;

/// <summary>`blockrepl status|promote|demote`: clients of the daemon's Admin service.</summary>
internal static class AdminCommands
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(10);

    public static async Task<int> StatusAsync(AdminAddress admin, string? volume, bool json, CancellationToken cancellationToken)
    {
        var reply = await CallAsync(admin, (client, options) => client.StatusAsync(new StatusRequest { Volume = volume ?? "" }, options), CallTimeout, cancellationToken)
            .ConfigureAwait(false);
        var report = StatusReport.From(reply);
        Console.Out.Write(json ? JsonSerializer.Serialize(report, StatusJsonContext.Default.StatusReport) + "\n" : Format(report));
        return 0;
    }

    /// <summary>
    /// `status --watch`: the daemon's status stream (Admin/WatchStatus) until Ctrl-C: a new status at each change the
    /// daemon signals (role, disk, connection, resync start and end, last error) and at least every second. On a
    /// terminal the screen is redrawn, with a progress bar (bytes, rate over the last seconds, ETA) for each running
    /// resync; otherwise one line per volume per status, or with <paramref name="json"/> one JSON object per line.
    /// An older daemon without the stream is polled every second instead. Exit 0 on Ctrl-C, 1 (and one line on
    /// stderr) when the daemon goes away.
    /// </summary>
    public static async Task<int> WatchAsync(AdminAddress admin, string? volume, bool json, CancellationToken cancellationToken)
    {
        var view = new WatchView(json);
        var replies = 0;
        using var channel = admin.CreateChannel();
        try
        {
            // Intervals 0: the daemon's defaults (LocksAndLimits.WatchMinInterval, WatchMaxInterval).
            using var call = new Admin.AdminClient(channel).WatchStatus(
                new WatchStatusRequest { Volume = volume ?? "" }, new CallOptions(cancellationToken: cancellationToken));
            await foreach (var reply in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                replies++;
                view.Show(StatusReport.From(reply));
            }

            await Console.Error.WriteLineAsync($"blockrepl: the daemon on {admin} ended the watch").ConfigureAwait(false);
            return 1;
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled })
        {
            return 0;
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.Unimplemented && replies == 0)
        {
            await Console.Error.WriteLineAsync($"blockrepl: the daemon on {admin} does not stream its status (an older version): polling every second")
                .ConfigureAwait(false);
        }
        catch (RpcException ex) when (replies > 0)
        {
            await Console.Error.WriteLineAsync($"blockrepl: the daemon on {admin} went away ({ex.Status.Detail})").ConfigureAwait(false);
            return 1;
        }
        catch (RpcException ex)
        {
            throw Describe(admin, ex, CallTimeout);
        }

        return await PollAsync(admin, volume, view, TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>`status --watch` against a daemon without Admin/WatchStatus: the status every <paramref name="interval"/>.</summary>
    private static async Task<int> PollAsync(AdminAddress admin, string? volume, WatchView view, TimeSpan interval, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var reply = await CallAsync(admin, (client, options) => client.StatusAsync(new StatusRequest { Volume = volume ?? "" }, options), CallTimeout, cancellationToken)
                    .ConfigureAwait(false);
                view.Show(StatusReport.From(reply));
                await Task.Delay(interval, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                break;
            }
        }

        return 0;
    }

    /// <summary>How `status --watch` shows each status it gets.</summary>
    private sealed class WatchView(bool json)
    {
        private readonly bool _terminal = !Console.IsOutputRedirected;
        private readonly Dictionary<string, Queue<(DateTime At, long Done)>> _samples = new(StringComparer.Ordinal);

        public void Show(StatusReport report)
        {
            if (json)
            {
                Console.Out.Write(JsonSerializer.Serialize(report, StatusJsonLineContext.Default.StatusReport) + "\n");
                return;
            }

            var now = DateTime.UtcNow;
            var bars = new StringBuilder();
            foreach (var v in report.Volumes)
            {
                bars.AppendLine(ProgressLine(v, now, _samples, _terminal ? 40 : 0));
            }

            Console.Out.Write(_terminal ? "\u001b[H\u001b[2J" + Format(report) + "\n" + bars + "(Ctrl-C to stop)\n" : bars.ToString());
        }
    }

    /// <summary>One line: the volume's state, and for a resync a bar, bytes, the rate over the last 5 s and the ETA.</summary>
    internal static string ProgressLine(VolumeReport v, DateTime now, Dictionary<string, Queue<(DateTime At, long Done)>> samples, int barWidth)
    {
        var ci = CultureInfo.InvariantCulture;
        var head = string.Create(ci, $"{now:HH:mm:ss} {v.Name} {v.Role} {v.Disk} {v.Connection}");
        if (v.Resync is not { } r)
        {
            samples.Remove(v.Name);
            return head + (v.DirtyBytes > 0 ? string.Create(ci, $"  dirty {ByteSize.Human(v.DirtyBytes)}") : "");
        }

        if (!samples.TryGetValue(v.Name, out var window))
        {
            samples[v.Name] = window = new Queue<(DateTime, long)>();
        }

        window.Enqueue((now, r.DoneBytes));
        while (window.Count > 2 && now - window.Peek().At > TimeSpan.FromSeconds(5))
        {
            window.Dequeue();
        }

        var (firstAt, firstDone) = window.Peek();
        var seconds = (now - firstAt).TotalSeconds;
        var rate = seconds > 0.5 ? Math.Max(0, r.DoneBytes - firstDone) / seconds : r.BytesPerSecond;
        var left = Math.Max(0, r.TotalBytes - r.DoneBytes);
        var eta = rate > 0 ? TimeSpan.FromSeconds(Math.Ceiling(left / rate)).ToString(@"h\:mm\:ss", ci) : "?";
        var fraction = r.TotalBytes > 0 ? Math.Clamp((double)r.DoneBytes / r.TotalBytes, 0, 1) : 0;
        var bar = barWidth > 0
            ? "[" + new string('#', (int)(fraction * barWidth)) + new string('-', barWidth - (int)(fraction * barWidth)) + "] "
            : "";
        return head + string.Create(ci,
            $"  {(r.Full ? "full sync" : "resync")} {bar}{fraction * 100:F1}%  {ByteSize.Human(r.DoneBytes)} of {ByteSize.Human(r.TotalBytes)}  {ByteSize.Human((long)rate)}/s  ETA {eta}");
    }

    public static async Task<int> PromoteAsync(AdminAddress admin, string? volume, bool force, CancellationToken cancellationToken)
    {
        var reply = await CallAsync(admin, (client, options) => client.PromoteAsync(new PromoteRequest { Volume = volume ?? "", Force = force }, options), CallTimeout, cancellationToken)
            .ConfigureAwait(false);
        if (!reply.Done)
        {
            throw new UserError($"promote refused: {reply.Reason}");
        }

        var behind = reply.MissingRecords > 0
            ? $"; it may be behind the old primary by {reply.MissingRecords} records that were not received (the old primary also held {reply.MissingBytes} bytes unsent)"
            : "";
        Console.Out.WriteLine($"blockrepl: promoted to primary (generation {reply.NewGeneration:x16}){behind}");
        return 0;
    }

    public static async Task<int> AttachAsync(AdminAddress admin, string? volume, CancellationToken cancellationToken)
    {
        var reply = await CallAsync(admin, (client, options) => client.AttachAsync(new AttachRequest { Volume = volume ?? "" }, options), TimeSpan.FromMinutes(30), cancellationToken)
            .ConfigureAwait(false);
        if (!reply.Done)
        {
            await Console.Error.WriteLineAsync($"blockrepl: attach refused: {reply.Reason}").ConfigureAwait(false);
            return 1;
        }

        Console.Out.WriteLine($"blockrepl: local disk attached ({ByteSize.Format((long)reply.PulledBytes)} pulled from the peer)");
        return 0;
    }

    public static async Task<int> ResolveAsync(AdminAddress admin, string? volume, bool discardMyData, CancellationToken cancellationToken)
    {
        if (!discardMyData)
        {
            throw new UserError("resolve needs --discard-my-data (run it on the split-brain victim: the node whose changes are to be discarded)");
        }

        var reply = await CallAsync(admin, (client, options) => client.ResolveAsync(new ResolveRequest { Volume = volume ?? "", DiscardMyData = true }, options), TimeSpan.FromSeconds(30), cancellationToken).ConfigureAwait(false);
        if (!reply.Done)
        {
            await Console.Error.WriteLineAsync($"blockrepl: resolve refused: {reply.Reason}").ConfigureAwait(false);
            return 1;
        }

        Console.Out.WriteLine($"blockrepl: this node is secondary and discards its data: {ByteSize.Format((long)reply.OwnDirtyBytes)} of its own changes will be overwritten by a {reply.Plan} resync when the peer connects");
        return 0;
    }

    public static async Task<int> DemoteAsync(AdminAddress admin, string? volume, TimeSpan? timeout, CancellationToken cancellationToken)
    {
        var request = new DemoteRequest { Volume = volume ?? "", TimeoutMs = (uint)(timeout?.TotalMilliseconds ?? 0) };
        var deadline = (timeout ?? AdminService.DemoteDrainTimeout) + TimeSpan.FromSeconds(30);
        var reply = await CallAsync(admin, (client, options) => client.DemoteAsync(request, options), deadline, cancellationToken)
            .ConfigureAwait(false);
        if (!reply.Done)
        {
            throw new UserError($"demote refused: {reply.Reason}");
        }

        Console.Out.WriteLine($"blockrepl: demoted to secondary ({reply.ClosedClients} clients closed){(reply.Reason.Length > 0 ? "; " + reply.Reason : "")}");
        return 0;
    }

    /// <summary>Exit codes of `verify` besides 0 (identical) and 1 (refused, failed, bad input).</summary>
    public const int VerifyDiffer = 3;
    public const int VerifyRepaired = 4;

    public static async Task<int> VerifyAsync(AdminAddress admin, string? volume, string? chunk, bool repair, bool json, CancellationToken cancellationToken)
    {
        uint chunkBytes = 0;
        if (chunk is not null)
        {
            long parsed;
            try
            {
                parsed = ByteSize.Parse(chunk);
            }
            catch (FormatException ex)
            {
                throw new UserError($"--chunk: {ex.Message}");
            }

            if (parsed < 4096 || parsed > Core.LocksAndLimits.MaxProbeBytes || parsed % 4096 != 0)
            {
                throw new UserError($"--chunk {chunk}: expected a multiple of 4K from 4K to 1M");
            }

            chunkBytes = (uint)parsed;
        }

        // A verify reads both images whole: allow hours, not the usual seconds.
        var reply = await CallAsync(admin, (client, options) => client.VerifyAsync(new VerifyRequest { Volume = volume ?? "", ChunkBytes = chunkBytes, Repair = repair }, options), TimeSpan.FromHours(12), cancellationToken).ConfigureAwait(false);
        var report = VerifyReportJson.From(reply.Report ?? new VerifyReport { Error = reply.Reason });
        if (json)
        {
            Console.Out.Write(JsonSerializer.Serialize(report, StatusJsonContext.Default.VerifyReportJson) + "\n");
        }

        if (!reply.Done)
        {
            throw new UserError($"verify {(report.BytesCompared == 0 ? "refused" : "failed")}: {reply.Reason}");
        }

        if (!json)
        {
            Console.Out.Write(FormatVerify(report));
        }

        return report.Differing.Count == 0 ? 0
            : repair && report.Remaining is { Count: 0 } ? VerifyRepaired
            : VerifyDiffer;
    }

    internal static string FormatVerify(VerifyReportJson r)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        var seconds = (r.FinishedAt - r.StartedAt).TotalSeconds;
        var skipped = r.DirtyChunksSkipped > 0 ? $", {r.DirtyChunksSkipped} chunks dirty in the bitmap skipped" : "";
        var outcome = r.Differing.Count == 0 ? "identical" : $"{r.Differing.Count} ranges differ ({ByteSize.Format(r.Differing.Sum(d => d.Length))})";
        sb.AppendLine(ci, $"blockrepl: verified {ByteSize.Format(r.BytesCompared)} in {r.ChunksCompared} chunks of {ByteSize.Format(r.ChunkBytes)} in {seconds:F1} s{skipped}: {outcome}");
        foreach (var d in r.Differing)
        {
            sb.AppendLine(ci, $"differ offset {d.Offset} length {d.Length}");
        }

        if (r.Repair && r.Differing.Count > 0 && r.Remaining is { } remaining)
        {
            sb.AppendLine(remaining.Count == 0 ? "repaired: the ranges were resynced and now match" : string.Create(ci, $"still differing after the repair: {remaining.Count} ranges"));
            foreach (var d in remaining)
            {
                sb.AppendLine(ci, $"remaining offset {d.Offset} length {d.Length}");
            }
        }

        return sb.ToString();
    }

    private static async Task<TResponse> CallAsync<TResponse>(
        AdminAddress admin, Func<Admin.AdminClient, CallOptions, AsyncUnaryCall<TResponse>> call, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var channel = admin.CreateChannel();
        try
        {
            return await call(new Admin.AdminClient(channel), new CallOptions(deadline: DateTime.UtcNow + timeout, cancellationToken: cancellationToken)).ConfigureAwait(false);
        }
        catch (RpcException ex)
        {
            throw Describe(admin, ex, timeout);
        }
    }

    /// <summary>A failed call as the one line a user sees.</summary>
    private static UserError Describe(AdminAddress admin, RpcException ex, TimeSpan timeout) => ex.StatusCode switch
    {
        StatusCode.Unavailable when FindSocketError(ex) is { } socketError => new UserError($"no daemon answers on {admin}: {socketError.Message}"),
        StatusCode.DeadlineExceeded => new UserError($"the daemon on {admin} did not answer within {timeout.TotalSeconds:0} s"),
        _ => new UserError($"{admin}: {ex.Status.Detail} ({ex.StatusCode})"),
    };

    private static Exception? FindSocketError(Exception ex)
    {
        for (var e = ex.InnerException; e is not null; e = e.InnerException)
        {
            if (e is SocketException)
            {
                return e;
            }
        }

        return ex.InnerException ?? ex;
    }

    internal static string Format(StatusReport report)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(ci, $"blockrepl {report.Version}, pid {report.Pid}, up since {report.StartedAt:u}");
        if (report.Runtime is { } rt)
        {
            sb.AppendLine(ci, $"gc: collections gen0 {rt.Gen0Collections}  gen1 {rt.Gen1Collections}  gen2 {rt.Gen2Collections}  allocated {rt.TotalAllocatedBytes / 1048576.0:F1} MiB  paused {rt.GcPauseTotalMs:F1} ms");
        }

        foreach (var v in report.Volumes)
        {
            sb.AppendLine();
            sb.AppendLine(ci, $"volume {v.Name}  {ByteSize.Format(v.SizeBytes)}  uuid {v.VolumeUuid}");
            sb.AppendLine(ci, $"  role {v.Role}  disk {v.Disk}  connection {v.Connection}  mode {v.Mode}{(v.Peer is null ? "" : "  peer " + v.Peer)}");
            sb.AppendLine(ci, $"  image {v.Image}");
            sb.AppendLine(ci, $"  generation {v.Generations.Current}  bitmap {v.Generations.Bitmap}  history [{string.Join(' ', v.Generations.History)}]");
            var c = v.Counters;
            sb.AppendLine(ci, $"  reads {c.Reads} ({ByteSize.Format(c.BytesRead)})  writes {c.Writes} ({ByteSize.Format(c.BytesWritten)})  flushes {c.Flushes}  trims {c.Trims}  zeroes {c.Zeroes}  errors {c.Errors}");
            if (v.Replication is { } r)
            {
                sb.AppendLine(ci, $"  replication: last seq {r.LastSeq}  received {r.ReceivedSeq}  applied {r.AppliedSeq}  durable {r.DurableSeq}  queued {r.QueuedRecords} records ({ByteSize.Format(r.QueuedBytes)})  oldest unacked {r.OldestUnackedUs / 1000.0:F1} ms  dirty {ByteSize.Format(v.DirtyBytes)}");
            }

            if (v.Wire is { } w)
            {
                sb.AppendLine(ci, $"  wire: {ByteSize.Format(w.PayloadBytes)} payload -> {ByteSize.Format(w.WireBytes)} on the wire ({w.WireToPayload:P0}) in {w.Batches} batches, {w.Records} records");
            }

            if (v.Resync is { } s)
            {
                sb.AppendLine(ci, $"  resync ({(s.Full ? "full" : "bitmap")}): {ByteSize.Format(s.DoneBytes)} of {ByteSize.Format(s.TotalBytes)}  {ByteSize.Format(s.BytesPerSecond)}/s  eta {s.EtaSeconds} s");
                sb.AppendLine(ci, $"    why: {s.Reason}");
            }

            if (v.LastResync is { } last)
            {
                sb.AppendLine(ci, $"  last resync ({(last.Full ? "full" : "bitmap")}): {ByteSize.Format(last.Bytes)} in {last.Seconds:F1} s; why: {last.Reason}");
            }

            if (v.ActivityLog is { } al)
            {
                sb.AppendLine(ci, $"  activity log: {al.HotExtents} of {al.Capacity} extents hot (4 MiB each)  {al.Transactions} transactions  {al.Evictions} evictions");
            }

            if (v.LocalMissingBytes > 0 || v.Disk == "diskless")
            {
                sb.AppendLine(ci, $"  local disk detached: reads and writes go through the peer; {ByteSize.Format(v.LocalMissingBytes)} written only there (blockrepl attach pulls them back)");
            }

            if (v.DiscardMyData)
            {
                sb.AppendLine("  discarding its data: the next resync from the peer overwrites this node's changes");
            }

            if (v.LastVerify is { } lv)
            {
                var outcome = lv.Error is not null ? "stopped: " + lv.Error
                    : lv.Differing.Count == 0 ? "identical"
                    : $"{lv.Differing.Count} ranges differed{(lv.Repair ? lv.Remaining is { Count: 0 } ? ", repaired" : ", not all repaired" : "")}";
                sb.AppendLine(ci, $"  last verify ({lv.FinishedAt:u}): {ByteSize.Format(lv.BytesCompared)} compared, {outcome}");
            }

            if (v.KnownMissing is { Records: > 0 } m)
            {
                sb.AppendLine(ci, $"  behind the primary by at least {m.Records} records (primary held {ByteSize.Format(m.Bytes)} unsent)");
            }

            if (v.LastError is not null)
            {
                sb.AppendLine(ci, $"  last error ({v.LastErrorAt:u}): {v.LastError}");
            }

            sb.AppendLine(ci, $"  clients {v.Clients.Count}");
            foreach (var client in v.Clients)
            {
                sb.AppendLine(ci, $"    {client.FrontEnd} {client.Remote} since {client.Since:u}");
            }
        }

        return sb.ToString();
    }
}
