using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// Every integration test starts real processes (the daemon and the NBD clients a user has); on a 2-core
/// machine they run one at a time. xunit.runner.json also turns collection parallelism off.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DaemonCollection
{
    public const string Name = "daemon";
}
