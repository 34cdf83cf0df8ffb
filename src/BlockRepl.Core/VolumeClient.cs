namespace BlockRepl.Core;

/// <summary>A front-end connection attached to a volume, as status shows it.</summary>
public sealed record VolumeClient(long Id, string FrontEnd, string Remote, DateTimeOffset Since);
