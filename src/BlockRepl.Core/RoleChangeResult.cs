namespace BlockRepl.Core;

/// <summary>The answer to <see cref="Volume.Promote"/> or <see cref="Volume.DemoteAsync"/>.</summary>
public sealed record RoleChangeResult(bool Done, string Reason, ulong MissingRecords = 0, ulong MissingBytes = 0, ulong NewGeneration = 0, ulong ShippedRecords = 0);
