using BlockRepl.Core;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace BlockRepl.Replication.Service;

/// <summary>
/// The daemon's health as grpc.health.v1 reports it (overall service ""): SERVING while every volume is healthy
/// or degraded, NOT_SERVING while one is in split brain (its writes stay local until an operator resolves it).
/// </summary>
/// <remarks>
/// Degraded (still SERVING, with the reason in the description): a volume's local disk failed and it serves
/// through its peer (diskless), or a volume with a peer is not connected to it.
/// </remarks>
internal sealed class VolumeHealthCheck(Func<IReadOnlyCollection<Volume>> volumes) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var degraded = new List<string>();
        foreach (var volume in volumes())
        {
            var connection = volume.Connection;
            if (connection == ConnectionState.SplitBrain)
            {
                return Task.FromResult(HealthCheckResult.Unhealthy($"volume {volume.Name}: split brain"));
            }

            if (volume.Disk == DiskState.Diskless)
            {
                degraded.Add($"volume {volume.Name}: diskless");
            }
            else if (volume.HasPeer && connection is ConnectionState.Connecting or ConnectionState.Standalone)
            {
                degraded.Add($"volume {volume.Name}: peer not connected");
            }
        }

        return Task.FromResult(degraded.Count == 0 ? HealthCheckResult.Healthy() : HealthCheckResult.Degraded(string.Join("; ", degraded)));
    }
}
