using System.Buffers.Binary;
using System.Text;

namespace BlockRepl.Iscsi;

/// <summary>
/// Persistent reservations (SPC-4 5.13) and the older RESERVE(6)/RELEASE(6) reservation (SPC-2 7.21) of one
/// logical unit, kept in memory (APTPL is not offered: they do not survive a daemon restart).
/// </summary>
/// <remarks>
/// Invariants, all under <see cref="_lock"/>: a holder is a registered nexus (for the all-registrants types
/// every registrant is a holder and <see cref="_holder"/> is the one that reserved); a reservation exists iff
/// <see cref="_type"/> is non-zero; <see cref="_generation"/> grows on every REGISTER, CLEAR, PREEMPT.
/// </remarks>
internal sealed class ScsiReservations
{
    // PERSISTENT RESERVE OUT types (SPC-4 6.16.3 table 176).
    public const byte WriteExclusive = 1;
    public const byte ExclusiveAccess = 3;
    public const byte WriteExclusiveRegistrantsOnly = 5;
    public const byte ExclusiveAccessRegistrantsOnly = 6;
    public const byte WriteExclusiveAllRegistrants = 7;
    public const byte ExclusiveAccessAllRegistrants = 8;

    private readonly Lock _lock = new();
    private readonly Dictionary<ScsiNexus, ulong> _registrations = [];
    private readonly Action<ScsiNexus, ushort> _unitAttention;
    private ScsiNexus? _holder;
    private byte _type;
    private uint _generation;
    private ScsiNexus? _spc2Holder;

    public ScsiReservations(Action<ScsiNexus, ushort> unitAttention) => _unitAttention = unitAttention;

    private static bool AllRegistrants(byte type) => type is WriteExclusiveAllRegistrants or ExclusiveAccessAllRegistrants;

    private static bool RegistrantsOnly(byte type) => type is WriteExclusiveRegistrantsOnly or ExclusiveAccessRegistrantsOnly;

    private static bool ValidType(byte type) => type is WriteExclusive or ExclusiveAccess or WriteExclusiveRegistrantsOnly
        or ExclusiveAccessRegistrantsOnly or WriteExclusiveAllRegistrants or ExclusiveAccessAllRegistrants;

    /// <summary>
    /// True when <paramref name="nexus"/> may not run a command of this kind now (status RESERVATION CONFLICT).
    /// <paramref name="reads"/>/<paramref name="writes"/> say whether the command reads or changes the medium.
    /// </summary>
    public bool Conflicts(ScsiNexus nexus, bool reads, bool writes)
    {
        lock (_lock)
        {
            if (_spc2Holder is not null && _spc2Holder != nexus)
            {
                return reads || writes;
            }

            if (_type == 0 || !(reads || writes))
            {
                return false;
            }

            if (IsHolderLocked(nexus))
            {
                return false;
            }

            var registered = _registrations.ContainsKey(nexus);
            return _type switch
            {
                WriteExclusive => writes,
                ExclusiveAccess => true,
                WriteExclusiveRegistrantsOnly or WriteExclusiveAllRegistrants => writes && !registered,
                _ => !registered, // the exclusive-access registrants types
            };
        }
    }

    private bool IsHolderLocked(ScsiNexus nexus) =>
        _type != 0 && (AllRegistrants(_type) ? _registrations.ContainsKey(nexus) : _holder == nexus);

    /// <summary>SPC-2 RESERVE(6)/(10): refused while another nexus holds it or persistent registrations exist.</summary>
    public bool Reserve6(ScsiNexus nexus)
    {
        lock (_lock)
        {
            if ((_spc2Holder is not null && _spc2Holder != nexus) || _registrations.Count > 0)
            {
                return false;
            }

            _spc2Holder = nexus;
            return true;
        }
    }

    /// <summary>SPC-2 RELEASE(6)/(10): a release by a nexus that does not hold it is a no-op with GOOD status.</summary>
    public void Release6(ScsiNexus nexus)
    {
        lock (_lock)
        {
            if (_spc2Holder == nexus)
            {
                _spc2Holder = null;
            }
        }
    }

    /// <summary>The nexus is gone (logout, connection loss, session reinstatement): the SPC-2 reservation ends.</summary>
    public void NexusLost(ScsiNexus nexus)
    {
        lock (_lock)
        {
            if (_spc2Holder == nexus)
            {
                _spc2Holder = null;
            }
        }
    }

    /// <summary>LOGICAL UNIT RESET and target resets clear the SPC-2 reservation; persistent ones stay (SPC-4 5.13.4.1).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _spc2Holder = null;
        }
    }

    public ScsiResult In(ScsiNexus nexus, ReadOnlySpan<byte> cdb)
    {
        var serviceAction = cdb[1] & 0x1f;
        var allocation = BinaryPrimitives.ReadUInt16BigEndian(cdb[7..]);
        byte[] data;
        lock (_lock)
        {
            switch (serviceAction)
            {
                case 0: // READ KEYS
                    data = new byte[8 + (8 * _registrations.Count)];
                    BinaryPrimitives.WriteUInt32BigEndian(data, _generation);
                    BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), (uint)(8 * _registrations.Count));
                    var at = 8;
                    foreach (var key in _registrations.Values)
                    {
                        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(at), key);
                        at += 8;
                    }

                    break;
                case 1: // READ RESERVATION
                    data = new byte[_type == 0 ? 8 : 24];
                    BinaryPrimitives.WriteUInt32BigEndian(data, _generation);
                    if (_type != 0)
                    {
                        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), 16);
                        var key = AllRegistrants(_type) ? 0 : _registrations.GetValueOrDefault(_holder!);
                        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(8), key);
                        data[21] = _type; // scope 0: logical unit
                    }

                    break;
                case 2: // REPORT CAPABILITIES (SPC-4 6.15.4)
                    data = new byte[8];
                    data[1] = 8;
                    data[2] = 0x10;            // CRH: RESERVE/RELEASE(6) follow the persistent reservation rules
                    data[3] = 0x80;            // TMV: the type mask below is valid
                    data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                    data[5] = 0x01;            // EX_AC_AR
                    break;
                case 3: // READ FULL STATUS (SPC-4 6.15.5)
                    var descriptors = new List<byte[]>();
                    foreach (var (who, key) in _registrations)
                    {
                        var transportId = IscsiTransportId(who);
                        var d = new byte[24 + transportId.Length];
                        BinaryPrimitives.WriteUInt64BigEndian(d, key);
                        if (IsHolderLocked(who))
                        {
                            d[12] = 0x01; // R_HOLDER
                            d[13] = _type;
                        }

                        BinaryPrimitives.WriteUInt16BigEndian(d.AsSpan(18), 1); // relative target port 1
                        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(20), (uint)transportId.Length);
                        transportId.CopyTo(d.AsSpan(24));
                        descriptors.Add(d);
                    }

                    var total = descriptors.Sum(d => d.Length);
                    data = new byte[8 + total];
                    BinaryPrimitives.WriteUInt32BigEndian(data, _generation);
                    BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), (uint)total);
                    var pos = 8;
                    foreach (var d in descriptors)
                    {
                        d.CopyTo(data.AsSpan(pos));
                        pos += d.Length;
                    }

                    break;
                default:
                    return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
            }
        }

        return ScsiResult.WithData(data, Math.Min(data.Length, (int)allocation));
    }

    /// <summary>TransportID of an iSCSI initiator port (SPC-4 7.6.4.6, format 01b): name,i,0xISID, NUL-padded to 4.</summary>
    private static byte[] IscsiTransportId(ScsiNexus nexus)
    {
        var name = Encoding.UTF8.GetBytes(nexus.InitiatorPort);
        var padded = (name.Length + 1 + 3) & ~3;
        var id = new byte[4 + padded];
        id[0] = 0x40 | 0x05; // format 01b, protocol identifier 5 (iSCSI)
        BinaryPrimitives.WriteUInt16BigEndian(id.AsSpan(2), (ushort)padded);
        name.CopyTo(id.AsSpan(4));
        return id;
    }

    public ScsiResult Out(ScsiNexus nexus, ReadOnlySpan<byte> cdb, ReadOnlySpan<byte> parameters)
    {
        var serviceAction = cdb[1] & 0x1f;
        var scope = cdb[2] >> 4;
        var type = (byte)(cdb[2] & 0x0f);
        var listLength = BinaryPrimitives.ReadUInt32BigEndian(cdb[5..]);
        if (serviceAction == 7)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb); // REGISTER AND MOVE: not offered
        }

        if (serviceAction > 7)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        if (listLength != 24 || parameters.Length < 24)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.ParameterListLengthError);
        }

        var key = BinaryPrimitives.ReadUInt64BigEndian(parameters);
        var serviceKey = BinaryPrimitives.ReadUInt64BigEndian(parameters[8..]);
        var flags = parameters[20];
        if ((flags & 0x0d) != 0)
        {
            // SPEC_I_PT and APTPL are not offered (REPORT CAPABILITIES says so); ALL_TG_PT is moot with one port.
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInParameterList);
        }

        if (serviceAction is 1 or 2 or 4 or 5 && (scope != 0 || !ValidType(type)))
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        lock (_lock)
        {
            var registered = _registrations.TryGetValue(nexus, out var current);
            switch (serviceAction)
            {
                case 0: // REGISTER
                case 6: // REGISTER AND IGNORE EXISTING KEY
                    if (serviceAction == 0 && (registered ? key != current : key != 0))
                    {
                        return Conflict();
                    }

                    if (serviceKey == 0)
                    {
                        if (registered)
                        {
                            UnregisterLocked(nexus);
                        }
                    }
                    else
                    {
                        _registrations[nexus] = serviceKey;
                    }

                    _generation++;
                    return ScsiResult.Good;

                case 1: // RESERVE
                    if (!registered || key != current)
                    {
                        return Conflict();
                    }

                    if (_spc2Holder is not null && _spc2Holder != nexus)
                    {
                        return Conflict();
                    }

                    if (_type == 0)
                    {
                        _holder = nexus;
                        _type = type;
                        return ScsiResult.Good;
                    }

                    return IsHolderLocked(nexus) && _type == type ? ScsiResult.Good : Conflict();

                case 2: // RELEASE
                    if (!registered || key != current)
                    {
                        return Conflict();
                    }

                    if (_type == 0 || !IsHolderLocked(nexus))
                    {
                        return ScsiResult.Good;
                    }

                    if (_type != type)
                    {
                        return ScsiResult.Check(ScsiSense.KeyIllegalRequest, 0x2604); // INVALID RELEASE OF PERSISTENT RESERVATION
                    }

                    ReleaseLocked(nexus, notify: RegistrantsOnly(_type) || AllRegistrants(_type));
                    return ScsiResult.Good;

                case 3: // CLEAR
                    if (!registered || key != current)
                    {
                        return Conflict();
                    }

                    foreach (var other in _registrations.Keys)
                    {
                        if (other != nexus)
                        {
                            _unitAttention(other, ScsiSense.ReservationsPreempted);
                        }
                    }

                    _registrations.Clear();
                    _type = 0;
                    _holder = null;
                    _generation++;
                    return ScsiResult.Good;

                default: // 4 PREEMPT, 5 PREEMPT AND ABORT
                    if (!registered || key != current)
                    {
                        return Conflict();
                    }

                    return PreemptLocked(nexus, serviceKey, type);
            }
        }
    }

    private ScsiResult PreemptLocked(ScsiNexus nexus, ulong serviceKey, byte type)
    {
        if (_type != 0 && AllRegistrants(_type) && serviceKey == 0)
        {
            // SPC-4 5.13.11.2.4: with an all-registrants reservation, key 0 preempts every other registrant.
            foreach (var other in _registrations.Keys.Where(n => n != nexus).ToList())
            {
                _registrations.Remove(other);
                _unitAttention(other, ScsiSense.RegistrationsPreempted);
            }

            _holder = nexus;
            _type = type;
            _generation++;
            return ScsiResult.Good;
        }

        if (serviceKey == 0)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInParameterList);
        }

        var victims = _registrations.Where(r => r.Value == serviceKey).Select(r => r.Key).ToList();
        var holderKey = _type != 0 && !AllRegistrants(_type) ? _registrations.GetValueOrDefault(_holder!) : (ulong?)null;
        if (victims.Count == 0)
        {
            return Conflict();
        }

        foreach (var victim in victims)
        {
            if (victim != nexus)
            {
                _registrations.Remove(victim);
                _unitAttention(victim, ScsiSense.RegistrationsPreempted);
            }
        }

        if (holderKey == serviceKey)
        {
            _holder = nexus;
            _type = type;
        }
        else if (_type != 0 && !_registrations.ContainsKey(_holder!) && !AllRegistrants(_type))
        {
            _type = 0;
            _holder = null;
        }

        _generation++;
        return ScsiResult.Good;
    }

    private void UnregisterLocked(ScsiNexus nexus)
    {
        var wasHolder = IsHolderLocked(nexus);
        _registrations.Remove(nexus);
        if (!wasHolder)
        {
            return;
        }

        if (AllRegistrants(_type))
        {
            if (_registrations.Count == 0)
            {
                _type = 0;
                _holder = null;
            }
            else if (_holder == nexus)
            {
                _holder = _registrations.Keys.First();
            }

            return;
        }

        // SPC-4 5.13.11.2.3: the holder unregistering releases the reservation; registrants-only types tell the others.
        ReleaseLocked(nexus, notify: RegistrantsOnly(_type));
    }

    private void ReleaseLocked(ScsiNexus nexus, bool notify)
    {
        _type = 0;
        _holder = null;
        if (notify)
        {
            foreach (var other in _registrations.Keys)
            {
                if (other != nexus)
                {
                    _unitAttention(other, ScsiSense.ReservationsReleased);
                }
            }
        }
    }

    private static ScsiResult Conflict() => ScsiResult.WithStatus(ScsiSense.StatusReservationConflict);
}
