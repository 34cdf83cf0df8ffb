using System.Text.Json.Serialization;
using BlockRepl.Replication.Service;
using BlockRepl.Replication.V1;

namespace BlockRepl;

/// <summary>
/// `blockrepl status --json`: the Admin service's StatusReply with states as the exact lowercase words of
/// DESIGN.md and camelCase names, so scripts can rely on them.
/// </summary>
internal sealed record StatusReport(
    string Version, int Pid, DateTimeOffset StartedAt, RuntimeReport? Runtime, IReadOnlyList<VolumeReport> Volumes)
{
    public static StatusReport From(StatusReply reply) => new(
        reply.DaemonVersion,
        reply.Pid,
        DateTimeOffset.FromUnixTimeMilliseconds(reply.StartedUnixMs),
        reply.Runtime is { } rt
            ? new RuntimeReport((long)rt.Gen0Collections, (long)rt.Gen1Collections, (long)rt.Gen2Collections,
                (long)rt.TotalAllocatedBytes, Math.Round(rt.GcPauseTotalUs / 1000.0, 3))
            : null,
        [.. reply.Volumes.Select(VolumeReport.From)]);
}

/// <summary>The daemon's garbage collector since it started (null from a daemon too old to send it).</summary>
internal sealed record RuntimeReport(
    long Gen0Collections, long Gen1Collections, long Gen2Collections, long TotalAllocatedBytes, double GcPauseTotalMs);

internal sealed record VolumeReport(
    string Name,
    string VolumeUuid,
    long SizeBytes,
    string Image,
    string Role,
    string Disk,
    string Connection,
    string Mode,
    string? Peer,
    IReadOnlyList<ClientReport> Clients,
    CounterReport Counters,
    ReplicationReport? Replication,
    WireReport? Wire,
    ResyncReport? Resync,
    long DirtyBytes,
    string? LastError,
    DateTimeOffset? LastErrorAt,
    GenerationReport Generations,
    MissingReport? KnownMissing,
    LastResyncReport? LastResync,
    ActivityLogReport? ActivityLog,
    bool DiscardMyData,
    VerifyReportJson? LastVerify,
    long LocalMissingBytes,
    IReadOnlyDictionary<string, long> ConnectionEntries)
{
    public static VolumeReport From(VolumeStatus v) => new(
        v.Name,
        v.Uuid,
        (long)v.SizeBytes,
        v.Image,
        WireStates.Word(v.Role),
        WireStates.Word(v.Disk),
        WireStates.Word(v.Connection),
        WireStates.Word(v.Mode),
        v.Peer.Length == 0 ? null : v.Peer,
        [.. v.Clients.Select(c => new ClientReport(c.FrontEnd, c.Remote, DateTimeOffset.FromUnixTimeMilliseconds(c.SinceUnixMs)))],
        new CounterReport((long)v.Counters.Reads, (long)v.Counters.Writes, (long)v.Counters.Flushes, (long)v.Counters.Trims,
            (long)v.Counters.Zeroes, (long)v.Counters.BytesRead, (long)v.Counters.BytesWritten, (long)v.Counters.Errors),
        v.Lag is { } l ? new ReplicationReport(l.LastSeq, l.ReceivedSeq, l.AppliedSeq, l.DurableSeq, (long)l.QueuedRecords, (long)l.QueuedBytes, (long)l.OldestUnackedUs,
            (long)l.AheadCount, (long)l.Connects, (long)l.Disconnects) : null,
        v.Wire is { } w ? new WireReport((long)w.PayloadBytes, (long)w.WireBytes, (long)w.Batches, (long)w.Records,
            w.PayloadBytes == 0 ? 0 : Math.Round((double)w.WireBytes / w.PayloadBytes, 4),
            (long)w.ChecksumRequests, (long)w.ChecksumReplyBytes, (long)w.ChecksumEqualBytes) : null,
        v.Resync is { } r ? new ResyncReport((long)r.TotalBytes, (long)r.DoneBytes, (long)r.BytesPerSecond, (long)r.EtaSeconds, r.Full, r.Reason) : null,
        (long)v.DirtyBytes,
        v.LastError.Length == 0 ? null : v.LastError,
        v.LastErrorUnixMs == 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds(v.LastErrorUnixMs),
        new GenerationReport(Hex(v.CurrentGeneration), Hex(v.BitmapGeneration), [.. v.HistoryGenerations.Select(Hex)]),
        v.Role == VolumeRole.Secondary ? new MissingReport((long)v.KnownMissingRecords, (long)v.KnownMissingBytes) : null,
        v.LastResync is { } lr ? new LastResyncReport((long)lr.Bytes, Math.Round(lr.Seconds, 3), lr.Full, lr.Reason) : null,
        v.ActivityLog is { } al ? new ActivityLogReport((int)al.HotExtents, (int)al.Capacity, (long)al.Transactions, (long)al.Evictions) : null,
        v.DiscardMyData,
        v.LastVerify is { } verify ? VerifyReportJson.From(verify) : null,
        (long)v.LocalMissingBytes,
        v.ConnectionEntries.ToDictionary(e => e.Key, e => (long)e.Value, StringComparer.Ordinal));

    private static string Hex(ulong g) => g.ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
}

internal sealed record ClientReport(string FrontEnd, string Remote, DateTimeOffset Since);

internal sealed record CounterReport(long Reads, long Writes, long Flushes, long Trims, long Zeroes, long BytesRead, long BytesWritten, long Errors);

internal sealed record ReplicationReport(
    ulong LastSeq, ulong ReceivedSeq, ulong AppliedSeq, ulong DurableSeq, long QueuedRecords, long QueuedBytes, long OldestUnackedUs,
    long AheadCount, long Connects, long Disconnects);

internal sealed record WireReport(long PayloadBytes, long WireBytes, long Batches, long Records, double WireToPayload,
    long ChecksumRequests = 0, long ChecksumReplyBytes = 0, long ChecksumEqualBytes = 0);

internal sealed record ResyncReport(long TotalBytes, long DoneBytes, long BytesPerSecond, long EtaSeconds, bool Full, string Reason);

internal sealed record LastResyncReport(long Bytes, double Seconds, bool Full, string Reason);

internal sealed record ActivityLogReport(int HotExtents, int Capacity, long Transactions, long Evictions);

internal sealed record GenerationReport(string Current, string Bitmap, IReadOnlyList<string> History);

internal sealed record MissingReport(long Records, long Bytes);

internal sealed record RangeReport(long Offset, long Length);

/// <summary>An online verify's outcome, in `status --json` (lastVerify) and `verify --json`.</summary>
internal sealed record VerifyReportJson(
    bool Done,
    bool Identical,
    string? Error,
    DateTimeOffset StartedAt,
    DateTimeOffset FinishedAt,
    int ChunkBytes,
    long BytesCompared,
    long ChunksCompared,
    long DirtyChunksSkipped,
    IReadOnlyList<RangeReport> Differing,
    bool Repair,
    IReadOnlyList<RangeReport>? Remaining)
{
    public static VerifyReportJson From(VerifyReport r) => new(
        r.Error.Length == 0,
        r.Error.Length == 0 && r.Differing.Count == 0,
        r.Error.Length == 0 ? null : r.Error,
        DateTimeOffset.FromUnixTimeMilliseconds(r.StartedUnixMs),
        DateTimeOffset.FromUnixTimeMilliseconds(r.FinishedUnixMs),
        (int)r.ChunkBytes,
        (long)r.BytesCompared,
        (long)r.ChunksCompared,
        (long)r.DirtyChunksSkipped,
        [.. r.Differing.Select(d => new RangeReport((long)d.Offset, (long)d.Length))],
        r.Repair,
        r.Repair ? [.. r.Remaining.Select(d => new RangeReport((long)d.Offset, (long)d.Length))] : null);
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(StatusReport))]
[JsonSerializable(typeof(VerifyReportJson))]
internal sealed partial class StatusJsonContext : JsonSerializerContext;

/// <summary>`status --watch --json`: the same names, one object per line.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(StatusReport))]
internal sealed partial class StatusJsonLineContext : JsonSerializerContext;
