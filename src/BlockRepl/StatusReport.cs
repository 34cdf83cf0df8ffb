using System.Text.Json.Serialization;
using BlockRepl.Core;

namespace BlockRepl;

/// <summary>
/// What <c>blockrepl status --json</c> prints. Field names and the state words (role, disk, connection)
/// are a stable interface for scripts.
/// </summary>
internal sealed record StatusReport(string Version, int Pid, DateTimeOffset StartedAt, IReadOnlyList<VolumeStatus> Volumes)
{
    public static StatusReport Capture(IEnumerable<Volume> volumes, DateTimeOffset startedAt) => new(
        typeof(StatusReport).Assembly.GetName().Version?.ToString() ?? "0",
        Environment.ProcessId,
        startedAt,
        [.. volumes.Select(VolumeStatus.Capture)]);
}

internal sealed record VolumeStatus(
    string Name,
    Guid VolumeUuid,
    long SizeBytes,
    string Image,
    string Role,
    string Disk,
    string Connection,
    IReadOnlyList<ClientStatus> Clients,
    CounterStatus Counters)
{
    public static VolumeStatus Capture(Volume v) => new(
        v.Name,
        v.VolumeUuid,
        v.Size,
        v.ImagePath,
        v.Role.Name(),
        v.Disk.Name(),
        v.Connection.Name(),
        [.. v.Clients.Select(c => new ClientStatus(c.FrontEnd, c.Remote, c.Since))],
        new CounterStatus(v.Counters.Reads, v.Counters.Writes, v.Counters.Flushes, v.Counters.Trims, v.Counters.Zeroes,
            v.Counters.BytesRead, v.Counters.BytesWritten, v.Counters.Errors));
}

internal sealed record ClientStatus(string FrontEnd, string Remote, DateTimeOffset Since);

internal sealed record CounterStatus(long Reads, long Writes, long Flushes, long Trims, long Zeroes, long BytesRead, long BytesWritten, long Errors);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(StatusReport))]
internal sealed partial class StatusJsonContext : JsonSerializerContext;
